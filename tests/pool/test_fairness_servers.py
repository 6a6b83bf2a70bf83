"""Fairness across keys on a real llama-server (SmolLM2, two slots): team A sends a burst of long
generations, team B then sends two; B's start in turn with A's waiting ones instead of behind
all of them. The order is what the clients observe (which request's first token came when), in
the pool and through the balancer with two real keys. The same requests all made for one key
are served first in, first out: B's wait behind the whole burst, as every request did before."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from rag.balancer import balancer_settings, create_balancer_app
from rag.core.pool import Pool
from rag.core.pool.client import PoolClient
from tests.conftest import wait_for
from tests.pool.conftest import SLOTS, busy_slots, serving
from tests.pool.test_pool_servers import healthy_pool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BURST = 6  # team A's requests: two run in the slots, four wait
LONG = {
    "prompt": "Count from one to one thousand: one, two,",
    "n_predict": 48,  # long enough that B's arrive while A's first ones still run
    "ignore_eos": True,  # every request as long as the others: slots free in pairs
    "stream": True,
}
KEY_A = "team-a-key-0123456789abcdef0123456789"
KEY_B = "team-b-key-0123456789abcdef0123456789"

Streamer = Callable[[str], contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]]


async def burst_then_two(
    open_stream: Streamer, buffered: Callable[[], Awaitable[int]], second: str
) -> list[str]:
    """Team A's burst, then two requests for ``second``; whose each request was (``a``: the
    burst, ``b``: the two sent after it), in the order their first tokens arrived."""
    started: list[str] = []

    async def one(tenant: str, name: str) -> None:
        async with open_stream(tenant) as chunks:
            async for chunk in chunks:
                if chunk and name not in started:
                    started.append(name)

    async def buffered_is(n: int) -> bool:
        return await buffered() == n

    tasks = [asyncio.create_task(one("team-a", f"a{n}")) for n in range(1, BURST + 1)]
    try:
        assert await wait_for(lambda: buffered_is(BURST - SLOTS), within=30)
        tasks += [asyncio.create_task(one(second, f"b{n}")) for n in (1, 2)]
        assert await wait_for(lambda: buffered_is(BURST - SLOTS + 2), within=30)
        assert len(started) <= SLOTS, "the first ones ended before the test could queue"
        await asyncio.wait_for(asyncio.gather(*tasks), 300)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [name[0] for name in started]


def assert_served_in_turn(started: list[str]) -> None:
    # slots free in pairs (equal generations that started together): each pair's order is the
    # race of two first tokens, the pairs' order is the buffer's (and through the balancer, the
    # order in which A's concurrent requests arrived is theirs: only whose they are counts)
    assert started[:2] == ["a", "a"], started
    assert sorted(started[2:4]) == ["a", "b"], started  # B, not served lately, and A in turn
    assert sorted(started[4:6]) == ["a", "b"], started
    assert started[6:] == ["a", "a"], started  # first in, first out would have left B's here


@pytest.mark.parametrize("second", ["team-b", "team-a"])
async def test_a_burst_of_one_key_does_not_starve_another_in_the_pool(
    upstreams: list[str], pool_http: PoolClient, second: str
) -> None:
    url = upstreams[0]
    pool: Pool = await healthy_pool(pool_http, [url], buffer_size=16, buffer_timeout=600)

    @contextlib.asynccontextmanager
    async def open_stream(tenant: str) -> AsyncIterator[AsyncIterator[bytes]]:
        async with pool.stream("POST", "/completion", json=LONG, tenant=tenant) as response:
            yield response.aiter_raw()

    async def buffered() -> int:
        return int(pool.status()["buffered"])

    try:
        started = await burst_then_two(open_stream, buffered, second)
    finally:
        await pool.stop()
    if second == "team-b":
        assert_served_in_turn(started)
    else:  # one key: first in, first out, B's requests behind the whole burst
        assert started == ["a"] * BURST + ["b", "b"], started
    assert await wait_for(lambda: _idle(pool_http, url), within=10)


async def test_a_burst_of_one_key_does_not_starve_another_through_the_balancer(
    upstreams: list[str], pool_http: PoolClient
) -> None:
    url = upstreams[0]
    settings = balancer_settings(
        upstreams=[url],
        poll_interval=0.2,
        buffer_size=16,
        buffer_timeout=600,  # a loaded machine: the order is the test, not the speed
        api_keys={"team-a": KEY_A, "team-b": KEY_B},
    )
    keys = {"team-a": KEY_A, "team-b": KEY_B}
    waiting: dict[str, int] = {}
    async with (
        serving(create_balancer_app(settings)) as balancer,
        httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=120.0)) as http,
    ):
        assert await wait_for(lambda: _slots_known(http, balancer), within=30)

        @contextlib.asynccontextmanager
        async def open_stream(tenant: str) -> AsyncIterator[AsyncIterator[bytes]]:
            headers = {"authorization": f"Bearer {keys[tenant]}"}
            async with http.stream(
                "POST", f"{balancer}/completion", json=LONG, headers=headers
            ) as response:
                assert response.status_code == 200
                yield response.aiter_raw()

        async def buffered() -> int:
            status = (await http.get(f"{balancer}/v1/pool")).json()  # loopback: no admin key
            waiting.update(status["buffered_by_tenant"])
            return int(status["buffered"])

        started = await burst_then_two(open_stream, buffered, "team-b")
        # requests without a key, or with another, are still refused
        refused = await http.post(f"{balancer}/completion", json={**LONG, "stream": False})
        assert refused.status_code == 401
    assert_served_in_turn(started)
    assert waiting == {"team-a": BURST - SLOTS, "team-b": 2}  # the keys' names, as the guard found
    assert await wait_for(lambda: _idle(pool_http, url), within=10)


async def _slots_known(http: httpx.AsyncClient, balancer: str) -> bool:
    upstreams: list[dict[str, Any]] = (await http.get(f"{balancer}/v1/pool")).json()["upstreams"]
    return bool(upstreams) and upstreams[0]["state"] == "healthy"


async def _idle(http: httpx.AsyncClient, url: str) -> bool:
    return await busy_slots(http, url) == 0
