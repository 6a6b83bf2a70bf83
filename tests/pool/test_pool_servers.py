"""The in-process ``Pool`` against several real llama-servers with the real model."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

from rag.core.pool import Pool
from rag.core.pool.client import PoolClient
from rag.core.pool.prefix import prefix_chain
from rag.core.settings import Settings
from tests.conftest import wait_for
from tests.pool.conftest import Binaries, busy_slots, start_servers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHORT = {"prompt": "The capital of France is", "n_predict": 4, "ignore_eos": True}  # always 4


async def hold_through(
    pool: Pool, body: dict[str, Any], started: asyncio.Event, prefix: tuple[str, ...] = ()
) -> None:
    async with pool.stream("POST", "/completion", json=body, prefix_key=prefix) as response:
        async for _ in response.aiter_raw():
            started.set()
            await asyncio.Event().wait()  # until cancelled


async def hold_direct(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
    async with http.stream("POST", f"{url}/completion", json=body) as response:
        async for _ in response.aiter_raw():
            await asyncio.Event().wait()


async def healthy_pool(http: PoolClient, urls: list[str], **options: Any) -> Pool:
    pool = Pool("test", http, **options)
    for url in urls:
        pool.add_upstream(url)
    await pool.start()
    ready = await wait_for(
        lambda: all(u["state"] == "healthy" for u in pool.status()["upstreams"]), within=30
    )
    assert ready, pool.status()
    return pool


async def cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_spread_by_free_slots_and_buffer_served_when_a_slot_frees(
    upstreams: list[str], pool_http: PoolClient, hold_body: dict[str, Any]
) -> None:
    a, b = upstreams
    # another client holds one slot of A; the pool learns it from /slots
    direct = asyncio.create_task(hold_direct(pool_http, a, hold_body))
    holders: list[asyncio.Task[None]] = []
    pool: Pool | None = None
    try:
        assert await wait_for(lambda: busy_slots(pool_http, a), within=30)
        # a poll interval longer than the test: what happens below is driven by events, not by
        # the tick (the first poll, at start, sees the slot held on A)
        pool = await healthy_pool(pool_http, upstreams, poll_interval=60.0)
        for _ in range(3):
            started = asyncio.Event()
            holders.append(asyncio.create_task(hold_through(pool, hold_body, started)))
            await asyncio.wait_for(started.wait(), 60)
        # slot-aware: B got two, A one; no request queues inside a llama-server
        assert await busy_slots(pool_http, a) == 2
        assert await busy_slots(pool_http, b) == 2
        waiting = asyncio.create_task(pool.request("POST", "/completion", json=SHORT))
        assert await wait_for(lambda: pool is not None and pool.status()["buffered"] == 1)
        await asyncio.sleep(0.3)  # a check that nothing happens: it must not be sent anywhere
        assert not waiting.done()
        await cancel(holders.pop(0))
        # when the slot frees, not at the next poll (a minute away)
        assert await wait_for(lambda: pool is not None and pool.status()["buffered"] == 0, 10)
        answer = await asyncio.wait_for(waiting, 60)
        assert answer.status_code == 200
        assert answer.json()["tokens_predicted"] > 0
    finally:
        await cancel(direct, *holders)
        if pool is not None:
            await pool.stop()
    for url in upstreams:
        assert await wait_for(lambda url=url: _idle(pool_http, url), within=10)


async def _idle(http: httpx.AsyncClient, url: str) -> bool:
    return await busy_slots(http, url) == 0


async def test_cancelled_stream_frees_the_slot_at_once(
    upstreams: list[str], pool_http: PoolClient, hold_body: dict[str, Any]
) -> None:
    pool = await healthy_pool(pool_http, upstreams[:1], poll_interval=0.2)
    try:
        started = asyncio.Event()
        holder = asyncio.create_task(hold_through(pool, hold_body, started))
        await asyncio.wait_for(started.wait(), 60)
        assert await busy_slots(pool_http, upstreams[0]) == 1
        await cancel(holder)
        assert pool.status()["upstreams"][0]["requests_in_flight"] == 0
        assert await wait_for(lambda: _idle(pool_http, upstreams[0]), within=5)  # of ~15 s
    finally:
        await pool.stop()


async def test_killed_upstream_is_taken_out_and_pending_requests_fail_over(
    base_settings: Settings,
    binaries: Binaries,
    upstreams: list[str],
    pool_http: PoolClient,
) -> None:
    supervisor = await start_servers(base_settings, binaries, ["pool-victim"], pool_http)
    victim = supervisor.children[0]
    pool = await healthy_pool(pool_http, [upstreams[1], victim.spec.url], poll_interval=0.3)
    try:
        body = {"prompt": "Write a story about a cat:", "n_predict": 24}
        tasks = [
            asyncio.create_task(pool.request("POST", "/completion", json=body)) for _ in range(4)
        ]
        assert await wait_for(lambda: _busy_at_least(pool_http, victim.spec.url, 2), within=60)
        assert victim.process is not None
        victim.process.kill()  # mid-generation: nothing of these answers was sent yet
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 240)
        assert [a.status_code for a in answers] == [200] * 4
        assert all(a.json()["tokens_predicted"] > 0 for a in answers)
        failovers = pool.metrics.failovers.labels("test")._value.get()
        assert failovers >= 2
        entry = next(u for u in pool.status()["upstreams"] if u["url"] == victim.spec.url)
        assert entry["errors"] >= 1
        # while it is down (restarting), new requests go to the other upstream without error
        answer = await pool.request("POST", "/completion", json=SHORT)
        assert answer.status_code == 200
    finally:
        await pool.stop()
        await supervisor.stop()


async def _busy_at_least(http: httpx.AsyncClient, url: str, n: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return await busy_slots(http, url) >= n
    return False


async def test_a_waiting_request_is_sent_ahead_as_a_generation_nears_its_end(
    upstreams: list[str], pool_http: PoolClient
) -> None:
    """Early handoff on a real server: with both slots held by streams, the buffered request is
    sent to llama-server while they still run (it waits in the server's own queue) and is
    served there once a slot frees."""
    pool = await healthy_pool(pool_http, upstreams[:1], poll_interval=3.0, handoff_tokens=2)
    body = {"prompt": "Count: one, two,", "n_predict": 32, "ignore_eos": True, "stream": True}
    try:
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(pool.stream("POST", "/completion", json=body))
            await stack.enter_async_context(pool.stream("POST", "/completion", json=body))
            waiting = asyncio.create_task(pool.request("POST", "/completion", json=SHORT))
            assert await wait_for(lambda: pool.status()["buffered"] == 1)
            most_in_flight = 0
            async for _ in first.aiter_raw():
                entry = pool.status()["upstreams"][0]
                most_in_flight = max(most_in_flight, entry["requests_in_flight"])
            # both streams were still open when the third request went to the server
            assert most_in_flight == 3
            assert pool.metrics.handoffs.labels("test")._value.get() == 1
        answer = await asyncio.wait_for(waiting, 60)
        assert answer.status_code == 200
        assert answer.json()["tokens_predicted"] == SHORT["n_predict"]
    finally:
        await pool.stop()
    assert await wait_for(lambda: _idle(pool_http, upstreams[0]), within=10)


async def test_a_long_shared_prefix_waits_for_the_server_that_holds_it(
    upstreams: list[str], pool_http: PoolClient
) -> None:
    """Prefix affinity on real servers: with the owner of a long prefix full, a request with the
    same prefix waits for it (while the other server stays free) and then re-uses its cache; a
    request without that prefix is not held up."""
    pool = await healthy_pool(pool_http, upstreams, poll_interval=3.0, affinity_wait=30.0)
    shared = "Sources: " + " ".join(f"[{i}] Cells divide and proteins fold." for i in range(30))
    assert len(shared) > 1024  # more than 4 blocks of 256 characters, about 300 tokens

    def body(question: str, tokens: int) -> dict[str, Any]:
        return {"prompt": f"{shared}\nQuestion: {question}?", "n_predict": tokens,
                "ignore_eos": True, "cache_prompt": True}  # fmt: skip

    def prefix(question: str) -> tuple[str, ...]:
        return prefix_chain(body(question, 1)["prompt"])

    holders: list[asyncio.Task[None]] = []
    try:
        for question in ("one", "two"):  # both slots of the owner, one after the other
            started = asyncio.Event()
            # ~300 prompt tokens and 1500 more: within the slot, busy until cancelled
            hold = {**body(question, 1500), "stream": True}
            holders.append(asyncio.create_task(hold_through(pool, hold, started, prefix(question))))
            await asyncio.wait_for(started.wait(), 60)
        owner = next(u["url"] for u in pool.status()["upstreams"] if u["requests_in_flight"])
        other = next(url for url in upstreams if url != owner)
        assert await busy_slots(pool_http, owner) == 2
        waiting = asyncio.create_task(
            pool.request("POST", "/completion", json=body("three", 4), prefix_key=prefix("three"))
        )
        assert await wait_for(lambda: pool.status()["buffered"] == 1)
        unrelated = await pool.request("POST", "/completion", json=SHORT)  # not held up
        assert unrelated.status_code == 200
        await asyncio.sleep(0.3)  # a check that nothing happens: it waits for the owner
        assert not waiting.done() and await busy_slots(pool_http, other) == 0
        await cancel(holders.pop(0))  # a slot of the owner frees
        answer = await asyncio.wait_for(waiting, 60)
        assert answer.json()["timings"]["cache_n"] > 150  # the shared prefix was re-used
    finally:
        await cancel(*holders)
        await pool.stop()
