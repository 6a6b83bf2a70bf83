"""Early handoff in the scheduler, with plain upstream values: a waiting request is sent ahead to
the upstream whose streamed generation is about to reach its token budget, once per lease, and
the slot accounting stays exact (nothing is handed the same slot twice)."""

from __future__ import annotations

import asyncio

from rag.pool.budget import stream_events, token_budget
from rag.pool.metrics import PoolMetrics
from rag.pool.scheduler import Lease, Scheduler
from rag.pool.upstream import Upstream, UpstreamState


def scheduler(*urls: str, slots: int = 1, handoff_tokens: int = 2) -> Scheduler:
    sched = Scheduler(
        "test", policy="slots", buffer_size=8, buffer_timeout=5.0, quarantine=1.0,
        poll_interval=1.0, metrics=PoolMetrics(), affinity=False, affinity_slack=1,
        handoff_tokens=handoff_tokens,
    )  # fmt: skip
    for url in urls:
        sched.upstreams[url] = Upstream(url, state=UpstreamState.HEALTHY, slots_total=slots)
    return sched


async def waiting(sched: Scheduler, exclude: frozenset[str] = frozenset()) -> asyncio.Task[Lease]:
    before = len(sched.buffer)
    task = asyncio.create_task(sched.acquire(True, (), exclude, 4))
    await asyncio.sleep(0)  # the task runs until it waits in the buffer
    assert len(sched.buffer) == before + 1
    return task


def handoffs(sched: Scheduler) -> float:
    return float(sched.metrics.handoffs.labels("test")._value.get())


async def test_a_waiting_request_is_sent_ahead_when_a_generation_nears_its_budget() -> None:
    sched = scheduler("http://a")
    running = await sched.acquire(True, (), frozenset(), 6)
    second = await waiting(sched)
    sched.progress(running, 3)  # 3 tokens left: not yet
    await asyncio.sleep(0)
    assert not second.done()
    sched.progress(running, 1)  # 2 left: the slot is about to free
    lease = await asyncio.wait_for(second, 1)
    assert lease.upstream.url == "http://a"
    assert lease.upstream.in_flight == 2  # one running, one queued inside the server
    assert handoffs(sched) == 1
    third = await waiting(sched)
    sched.progress(running, 1)  # the slot was already handed on once
    sched.release(running)  # its slot is the one handed on: nothing more to give
    await asyncio.sleep(0)
    assert not third.done() and len(sched.buffer) == 1
    sched.release(lease)
    assert (await asyncio.wait_for(third, 1)).upstream.in_flight == 1


async def test_a_request_arriving_when_a_generation_is_already_near_its_end_goes_ahead() -> None:
    sched = scheduler("http://a")
    running = await sched.acquire(True, (), frozenset(), 4)
    sched.progress(running, 3)  # near its end, nobody waiting yet
    late = asyncio.create_task(sched.acquire(True, (), frozenset(), 4))
    lease = await asyncio.wait_for(late, 1)  # handed on as it arrived
    assert lease.upstream.in_flight == 2 and len(sched.buffer) == 0
    another = await waiting(sched)  # that slot is promised: this one waits
    sched.progress(running, 1)
    sched.release(running)
    await asyncio.sleep(0)
    assert not another.done()
    sched.release(lease)
    sched.release(await asyncio.wait_for(another, 1))
    assert handoffs(sched) == 1


async def test_no_handoff_without_a_budget_or_when_switched_off() -> None:
    sched = scheduler("http://a")
    unknown = await sched.acquire(True, (), frozenset(), None)
    second = await waiting(sched)
    sched.progress(unknown, 1000)
    await asyncio.sleep(0)
    assert not second.done()
    sched.release(unknown)
    sched.release(await asyncio.wait_for(second, 1))

    off = scheduler("http://a", handoff_tokens=0)
    running = await off.acquire(True, (), frozenset(), 3)
    assert running.budget is None  # nothing to count when handoff is off
    later = await waiting(off)
    off.progress(running, 3)
    await asyncio.sleep(0)
    assert not later.done()
    off.release(running)
    assert (await asyncio.wait_for(later, 1)).upstream.url == "http://a"


async def test_handoff_keeps_order_and_skips_a_request_that_excludes_the_upstream() -> None:
    sched = scheduler("http://a", "http://b")
    on_a = await sched.acquire(True, (), frozenset(), 4)
    on_b = await sched.acquire(True, (), frozenset(), 40)
    assert {on_a.upstream.url, on_b.upstream.url} == {"http://a", "http://b"}
    not_a = await waiting(sched, exclude=frozenset({on_a.upstream.url}))  # failing over from it
    anyone = await waiting(sched)
    sched.progress(on_a, 2)
    lease = await asyncio.wait_for(anyone, 1)
    assert lease.upstream is on_a.upstream
    assert not not_a.done()
    sched.release(on_b)  # B frees: the oldest request that may go there gets it
    assert (await asyncio.wait_for(not_a, 1)).upstream is on_b.upstream


def test_token_budget_and_stream_events() -> None:
    assert token_budget({"n_predict": 8}) == 8
    assert token_budget({"max_tokens": 16}) == 16
    assert token_budget({"max_completion_tokens": 5}) == 5
    assert token_budget({"n_predict": -1}) is None  # until the context ends: unknown
    assert token_budget({"n_predict": True}) is None
    assert token_budget({"prompt": "x"}) is None
    assert token_budget(["n_predict"]) is None
    assert stream_events(b'data: {"content":"a"}\n\ndata: {"content":"b"}\n\n') == 2
    assert stream_events(b"") == 0
