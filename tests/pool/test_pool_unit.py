"""The pool's scheduling against fake upstreams at the HTTP boundary (``httpx.MockTransport``).

The real llama-server tests are in ``test_pool_servers.py``; these check the bookkeeping fast.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from rag.core.errors import RateLimited, UpstreamFailed, UpstreamUnavailable
from rag.core.pool import Pool, UpstreamRejected
from rag.core.pool.client import PoolClient
from rag.core.pool.policy import POLICIES
from rag.core.pool.requesting import ABANDONED_HUSH
from rag.core.pool.settings import PoolSettings, build_pool
from rag.core.runtime.membership import follow_supervisor
from rag.core.runtime.supervisor import ChildSpec, ChildState, Supervisor
from rag.core.settings import Settings
from tests.conftest import wait_for


class FakeLlama:
    """A llama-server stand-in: N slots; /completion holds a slot until ``release`` is set."""

    def __init__(self, slots: int = 1, *, health: int = 200) -> None:
        self.slots = slots
        self.health = health
        self.busy = 0
        self.served = 0
        self.release = asyncio.Event()
        self.status = 200
        self.down = False

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/health":
            return httpx.Response(self.health, json={"status": "ok"})
        if path == "/props":
            return httpx.Response(200, json={"total_slots": self.slots, "model_path": "m.gguf"})
        if path == "/slots":
            return httpx.Response(
                200, json=[{"id": i, "is_processing": i < self.busy} for i in range(self.slots)]
            )
        if path == "/tokenize":
            return httpx.Response(200, json={"tokens": [1, 2]})
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "nope"}})
        self.busy += 1
        try:
            await self.release.wait()
        finally:
            self.busy -= 1
        self.served += 1
        return httpx.Response(200, json={"content": "ok", "echo": json.loads(request.content)})


def transport(fakes: dict[str, FakeLlama]) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        return await fakes[f"http://{request.url.host}"].handle(request)

    return httpx.MockTransport(handler)


@pytest.fixture
async def fakes() -> AsyncIterator[dict[str, FakeLlama]]:
    fakes = {"http://a": FakeLlama(), "http://b": FakeLlama()}
    yield fakes
    for fake in fakes.values():
        fake.release.set()


async def started_pool(fakes: dict[str, FakeLlama], **options: float) -> Pool:
    http = PoolClient(transport=transport(fakes), timeout=httpx.Timeout(5.0))
    pool = Pool("test", http, poll_interval=0.05, **options)  # type: ignore[arg-type]
    for url in fakes:
        pool.add_upstream(url)
    await pool.start()
    polled = await wait_for(lambda: all(u["state"] != "unknown" for u in _upstreams(pool)))
    assert polled, pool.status()  # every upstream polled once (healthy, or loading on purpose)
    return pool


def _upstreams(pool: Pool) -> list[dict[str, object]]:
    upstreams: list[dict[str, object]] = pool.status()["upstreams"]
    return upstreams


def _in_flight(pool: Pool) -> int:
    return sum(int(u["requests_in_flight"]) for u in pool.status()["upstreams"])


async def test_spreads_by_slots_buffers_and_serves_in_order(fakes: dict[str, FakeLlama]) -> None:
    pool = await started_pool(fakes, buffer_size=2, buffer_timeout=5.0)
    try:
        tasks = [
            asyncio.create_task(pool.request("POST", "/completion", json={"n": n}))
            for n in range(4)
        ]
        assert await wait_for(lambda: pool.status()["buffered"] == 2)
        status = pool.status()
        assert [u["slots_busy"] for u in status["upstreams"]] == [1, 1]
        assert status["buffered"] == 2
        scraped = generate_latest(pool.metrics.registry).decode()
        for url in fakes:
            assert f'rag_pool_slots_busy{{pool="test",upstream="{url}"}} 1.0' in scraped
            assert f'rag_pool_upstream_up{{pool="test",upstream="{url}"}} 1.0' in scraped
        with pytest.raises(RateLimited):
            await pool.request("POST", "/completion", json={"n": 99})
        for fake in fakes.values():
            fake.release.set()
        answers = await asyncio.gather(*tasks)
        assert [a.json()["echo"]["n"] for a in answers] == [0, 1, 2, 3]
        assert pool.status()["buffered"] == 0
        assert sum(u["requests_in_flight"] for u in pool.status()["upstreams"]) == 0
        scraped = generate_latest(pool.metrics.registry).decode()
        assert 'rag_pool_slots_busy{pool="test",upstream="http://a"} 0.0' in scraped
        await pool.remove_upstream("http://a")
        scraped = generate_latest(pool.metrics.registry).decode()
        gauges = ("rag_pool_slots_busy{", "rag_pool_slots_total{", "rag_pool_upstream_up{")
        state = [line for line in scraped.splitlines() if line.startswith(gauges)]
        assert len(state) == 3 and all('upstream="http://b"' in line for line in state)
        assert 'rag_pool_slots_total{pool="test",upstream="http://b"} 1.0' in scraped
    finally:
        await pool.stop()
        await pool.http.aclose()


async def test_buffer_timeout_is_503_with_retry_after(fakes: dict[str, FakeLlama]) -> None:
    pool = await started_pool(fakes, buffer_timeout=0.3)
    try:
        holders = [asyncio.create_task(pool.request("POST", "/completion", json={})) for _ in "ab"]
        assert await wait_for(lambda: _in_flight(pool) == 2)
        waiting = asyncio.create_task(pool.request("POST", "/completion", json={}))
        assert await wait_for(lambda: pool.status()["buffered"] == 1)
        # requests that need no slot pass busy slots and the waiting requests
        tokens = await pool.request("POST", "/tokenize", json={"content": "x"})
        assert tokens.json() == {"tokens": [1, 2]}
        with pytest.raises(UpstreamUnavailable) as caught:
            await waiting
        assert caught.value.retry_after is not None
        for fake in fakes.values():
            fake.release.set()
        await asyncio.gather(*holders)
    finally:
        await pool.stop()
        await pool.http.aclose()


async def test_cancelled_waiter_and_holder_give_slots_back(fakes: dict[str, FakeLlama]) -> None:
    pool = await started_pool(fakes)
    try:
        holders = [asyncio.create_task(pool.request("POST", "/completion", json={})) for _ in "ab"]
        waiter = asyncio.create_task(pool.request("POST", "/completion", json={}))
        assert await wait_for(lambda: pool.status()["buffered"] == 1)
        waiter.cancel()
        holders[0].cancel()
        await asyncio.gather(waiter, holders[0], return_exceptions=True)
        status = pool.status()
        assert status["buffered"] == 0
        # the holder was given up before its answer: its slot stays counted busy a moment, for
        # the upstream to notice the closed connection (ABANDONED_HUSH)
        assert sum(u["requests_in_flight"] for u in status["upstreams"]) == 2
        assert await wait_for(lambda: _in_flight(pool) == 1, within=ABANDONED_HUSH + 2)
        for fake in fakes.values():
            fake.release.set()
        await holders[1]
    finally:
        await pool.stop()
        await pool.http.aclose()


async def test_connect_error_fails_over_and_quarantines(fakes: dict[str, FakeLlama]) -> None:
    pool = await started_pool(fakes, quarantine=30.0)
    try:
        fakes["http://a"].down = True
        for fake in fakes.values():
            fake.release.set()
        answers = [await pool.request("POST", "/completion", json={}) for _ in range(3)]
        assert all(a.status_code == 200 for a in answers)
        assert fakes["http://b"].served == 3
        states = {u["url"]: u["state"] for u in pool.status()["upstreams"]}
        assert states["http://a"] in ("quarantined", "unreachable")
    finally:
        await pool.stop()
        await pool.http.aclose()


async def test_4xx_is_passed_on_and_5xx_fails_over(fakes: dict[str, FakeLlama]) -> None:
    pool = await started_pool(fakes)
    try:
        for fake in fakes.values():
            fake.release.set()
            fake.status = 400
        with pytest.raises(UpstreamRejected) as rejected:
            await pool.request("POST", "/completion", json={})
        assert rejected.value.upstream_status == 400
        fakes["http://a"].status = 500
        fakes["http://b"].status = 200
        for _ in range(3):
            answer = await pool.request("POST", "/completion", json={})
            assert answer.status_code == 200
        fakes["http://b"].status = 500
        with pytest.raises(UpstreamFailed) as failed:
            await pool.request("POST", "/completion", json={})
        # every upstream answered 500: the last answer is passed on, not turned into a 502
        assert isinstance(failed.value, UpstreamRejected)
        assert failed.value.upstream_status == 500
    finally:
        await pool.stop()
        await pool.http.aclose()


async def test_no_upstream_is_503_and_draining_removal() -> None:
    fake = FakeLlama()
    http = PoolClient(transport=transport({"http://a": fake}), timeout=httpx.Timeout(5.0))
    pool = Pool("empty", http, poll_interval=0.05)
    await pool.start()
    try:
        with pytest.raises(UpstreamUnavailable):
            await pool.request("POST", "/completion", json={})
        pool.add_upstream("http://a/")
        running = asyncio.create_task(pool.request("POST", "/completion", json={}))
        assert await wait_for(lambda: fake.busy == 1)  # the upstream is healthy and has it
        removal = asyncio.create_task(pool.remove_upstream("http://a"))
        assert await wait_for(lambda: pool.status()["upstreams"][0]["draining"] is True)
        assert not removal.done()  # it waits for the running request
        fake.release.set()
        assert (await running).status_code == 200
        await removal
        assert pool.urls == []
    finally:
        await pool.stop()
        await http.aclose()


async def test_loading_upstream_is_not_chosen() -> None:
    fakes = {"http://a": FakeLlama(health=503), "http://b": FakeLlama()}
    fakes["http://b"].release.set()
    pool = await started_pool(fakes)
    try:
        for _ in range(4):
            await pool.request("POST", "/completion", json={})
        assert fakes["http://b"].served == 4
        assert pool.status()["upstreams"][0]["state"] == "loading"
    finally:
        await pool.stop()
        await pool.http.aclose()


async def test_supervised_children_join_and_leave(tmp_path: Path) -> None:
    spec = ChildSpec("gen-0", "generation", (), 1)
    other = ChildSpec("emb-0", "embedding", (), 2)
    async with PoolClient(transport=transport({}), timeout=httpx.Timeout(1.0)) as http:
        supervisor = Supervisor(Path("/bin/true"), [spec, other], logs_dir=tmp_path, http=http)
        pool = Pool("generation", http)
        follow_supervisor(pool, supervisor, "generation")
        child, embedding = supervisor.children
        supervisor._set(child, ChildState.HEALTHY)  # what the supervisor does when /health is 200
        supervisor._set(embedding, ChildState.HEALTHY)
        assert pool.urls == [spec.url]
        supervisor._set(child, ChildState.BACKOFF)  # restarting: stays, the poller sees it down
        assert pool.urls == [spec.url]
        supervisor._set(child, ChildState.STOPPED)
        assert await wait_for(lambda: pool.urls == [])
        await pool.stop()


@pytest.mark.parametrize("policy", POLICIES)
async def test_every_policy_the_settings_accept_starts_a_pool(policy: str) -> None:
    settings = Settings(pool=PoolSettings(policy=policy))  # type: ignore[arg-type]
    async with httpx.AsyncClient() as http:
        pool = build_pool("test", http, settings.pool)
    assert pool.policy == policy
