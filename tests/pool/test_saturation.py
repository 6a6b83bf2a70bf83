"""Saturation without loss, on real llama-servers: every slot busy with streamed generations,
request after request, and the pool must neither fail a request nor queue one while a slot is
free, nor leave its view of the slots off by one.

What went wrong on a GPU host (64 streams over two servers of 32 slots: 502s, requests waiting
seconds in the buffer while slots were free): llama-server closes the connection after every
chunked (streamed) answer although it promises ``Keep-Alive``. The pool put such connections
back in its pool, the next request on one met a closed socket, the one resend took another
pooled, equally closed connection, and the request failed over: to a 502 when every upstream had
been tried, or into the buffer to wait for a slot of another upstream (the failed one excluded)
while its own slots were free. These tests count on the pool's metrics and state, not on time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rag.core.pool import Pool
from rag.core.pool.client import PoolClient
from rag.core.pool.transport import UpstreamTransport
from rag.core.runtime.supervisor import ChildSpec, free_port
from rag.core.settings import Settings
from tests.conftest import start_children, wait_for
from tests.pool.conftest import SLOTS, Binaries, busy_slots
from tests.pool.test_pool_servers import cancel, healthy_pool, hold_direct

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WIDE = 16
STREAM = {"prompt": "Say hello", "n_predict": 2, "stream": True, "ignore_eos": True}


async def streamed(pool: Pool, body: dict[str, Any]) -> dict[str, Any]:
    async with pool.stream("POST", "/completion", json=body) as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    final: dict[str, Any] = json.loads(lines[-1][6:])
    return final


def counted(pool: Pool, name: str) -> float:
    """The sum of a pool metric's samples (all labels) for ``name``."""
    return sum(
        sample.value
        for family in pool.metrics.registry.collect()
        for sample in family.samples
        if sample.name == name and sample.labels.get("pool") == pool.name
    )


def transport(http: PoolClient) -> UpstreamTransport:
    sent = http.upstream_transport
    assert isinstance(sent, UpstreamTransport)
    return sent


@pytest.fixture(scope="module")
async def wide(
    base_settings: Settings, binaries: Binaries, pool_http: PoolClient
) -> AsyncIterator[str]:
    """One real llama-server with many small slots (``-np 16``, 256 tokens each)."""
    args = ("-m", str(binaries.generation_model), "-c", str(256 * WIDE), "-np", str(WIDE),
            "-t", "1", "--no-webui")  # fmt: skip
    spec = ChildSpec("pool-wide", "generation", args, free_port())
    supervisor = await start_children(
        binaries.llama_server, [spec], logs_dir=base_settings.logs_dir, http=pool_http
    )
    yield spec.url
    await supervisor.stop()


async def test_many_streams_back_to_back_fail_nothing(wide: str, pool_http: PoolClient) -> None:
    """One upstream of 16 slots, twice as many closed-loop clients, two-token streams back to
    back (the buffer and early handoff busy): before the fix, requests met connections that
    llama-server had closed after their last streamed answer, the one resend often met another,
    and with no other upstream to fail over to the request failed (the balancer's 502)."""
    pool = await healthy_pool(pool_http, [wide], poll_interval=0.05, buffer_size=64)
    resent = transport(pool_http).resent

    async def client() -> None:
        for _ in range(6):
            assert (await streamed(pool, STREAM))["stop"]

    try:
        await asyncio.gather(*(client() for _ in range(2 * WIDE)))
        assert counted(pool, "rag_pool_failovers_total") == 0
        assert counted(pool, "rag_pool_upstream_errors_total") == 0
        # no request had to be sent again: no connection was reused after a streamed answer
        assert transport(pool_http).resent == resent
    finally:
        await pool.stop()


async def test_as_many_clients_as_slots_never_wait_and_the_view_stays_exact(
    upstreams: list[str], pool_http: PoolClient
) -> None:
    """As many closed-loop clients as the two upstreams have slots, short streams back to back
    (each client's next request comes the moment its last answer ended): a slot is always free
    for it, so not one request may enter the buffer; afterwards the pool and llama-server agree
    that every slot is free."""
    pool = await healthy_pool(pool_http, upstreams, poll_interval=0.05)
    clients = SLOTS * len(upstreams)

    async def client() -> None:
        for _ in range(8):
            assert (await streamed(pool, STREAM))["stop"]

    try:
        await asyncio.gather(*(client() for _ in range(clients)))
        assert counted(pool, "rag_pool_buffer_wait_seconds_count") == 0
        assert counted(pool, "rag_pool_failovers_total") == 0
        assert counted(pool, "rag_pool_rejected_total") == 0
        for url in upstreams:
            assert await busy_slots(pool_http, url) == 0
        members = pool.scheduler.members()
        assert [(u.in_flight, u.requests) for u in members] == [(0, 0)] * len(members)
        # and the polls see no load of other clients: the view settles on every slot free
        assert await wait_for(lambda: all(u.slots_busy == 0 for u in members), within=10)
    finally:
        await pool.stop()


async def test_a_request_kept_off_only_by_others_load_that_ended_polls_again(
    upstreams: list[str], pool_http: PoolClient, hold_body: dict[str, Any]
) -> None:
    """Other clients held every slot when the pool last polled, then went: the pool must not
    leave the freed slots idle until its next round (60 s here, well past the buffer timeout)
    while a request waits, but poll again at once. On the GPU host this was a bench's direct
    phase just before its balancer phase: the first 64 requests waited 0.1-0.5 s."""
    url = upstreams[0]
    holds = [asyncio.create_task(hold_direct(pool_http, url, hold_body)) for _ in range(SLOTS)]
    pool: Pool | None = None
    try:
        assert await wait_for(lambda: _busy(pool_http, url, SLOTS), within=30)
        pool = await healthy_pool(pool_http, [url], poll_interval=60.0, buffer_timeout=20.0)
        (upstream,) = pool.scheduler.members()
        assert upstream.foreign == SLOTS  # the first poll saw the others' load
        await cancel(*holds)
        assert await wait_for(lambda: _busy(pool_http, url, 0), within=30)
        answer = await pool.request("POST", "/completion", json={"prompt": "Hi", "n_predict": 2})
        assert answer.status_code == 200
        assert counted(pool, "rag_pool_buffer_wait_seconds_count") == 1  # it did wait, then
        assert upstream.foreign == 0  # a poll it asked for showed the slots free
    finally:
        await cancel(*holds)
        if pool is not None:
            await pool.stop()


async def _busy(http: PoolClient, url: str, count: int) -> bool:
    return await busy_slots(http, url) == count
