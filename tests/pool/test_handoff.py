"""The scheduler's buffer with plain upstream values. Early handoff: a waiting request is sent
ahead to the upstream whose streamed generation is about to reach its token budget, once per
lease, and the slot accounting stays exact (nothing is handed the same slot twice). Waiting for
the owner of a long prefix: up to ``affinity_wait``, then anywhere."""

from __future__ import annotations

import asyncio

from rag.core.pool.budget import stream_events, token_budget
from rag.core.pool.metrics import PoolMetrics
from rag.core.pool.scheduler import Lease, Scheduler
from rag.core.pool.upstream import UpstreamState

# What these tests wait for happens at once (or after affinity_wait, 0.2 s); the bound only stops a
# broken scheduler from hanging the test, so it is generous for a loaded machine.
SOON = 10.0


def scheduler(
    *urls: str,
    slots: int = 1,
    handoff_tokens: int = 2,
    affinity_wait: float = 0.0,
    buffer_size: int = 8,
) -> Scheduler:
    sched = Scheduler(
        "test", policy="slots", buffer_size=buffer_size, buffer_timeout=5.0, quarantine=1.0,
        poll_interval=1.0, metrics=PoolMetrics(), affinity=affinity_wait > 0, affinity_slack=1,
        handoff_tokens=handoff_tokens, affinity_wait=affinity_wait,
    )  # fmt: skip
    for url in urls:
        sched.add(url)
        upstream = sched.upstream(url)
        assert upstream is not None
        upstream.state, upstream.slots_total = UpstreamState.HEALTHY, slots  # as a poll would
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
    lease = await asyncio.wait_for(second, SOON)
    assert lease.upstream.url == "http://a"
    assert lease.upstream.in_flight == 2  # one running, one queued inside the server
    assert handoffs(sched) == 1
    third = await waiting(sched)
    sched.progress(running, 1)  # the slot was already handed on once
    sched.release(running)  # its slot is the one handed on: nothing more to give
    await asyncio.sleep(0)
    assert not third.done() and len(sched.buffer) == 1
    sched.release(lease)
    assert (await asyncio.wait_for(third, SOON)).upstream.in_flight == 1


async def test_a_request_arriving_when_a_generation_is_already_near_its_end_goes_ahead() -> None:
    sched = scheduler("http://a")
    running = await sched.acquire(True, (), frozenset(), 4)
    sched.progress(running, 3)  # near its end, nobody waiting yet
    late = asyncio.create_task(sched.acquire(True, (), frozenset(), 4))
    lease = await asyncio.wait_for(late, SOON)  # handed on as it arrived
    assert lease.upstream.in_flight == 2 and len(sched.buffer) == 0
    another = await waiting(sched)  # that slot is promised: this one waits
    sched.progress(running, 1)
    sched.release(running)
    await asyncio.sleep(0)
    assert not another.done()
    sched.release(lease)
    sched.release(await asyncio.wait_for(another, SOON))
    assert handoffs(sched) == 1


async def test_no_handoff_without_a_budget_or_when_switched_off() -> None:
    sched = scheduler("http://a")
    unknown = await sched.acquire(True, (), frozenset(), None)
    second = await waiting(sched)
    sched.progress(unknown, 1000)
    await asyncio.sleep(0)
    assert not second.done()
    sched.release(unknown)
    sched.release(await asyncio.wait_for(second, SOON))

    off = scheduler("http://a", handoff_tokens=0)
    running = await off.acquire(True, (), frozenset(), 3)
    assert running.budget is None  # nothing to count when handoff is off
    later = await waiting(off)
    off.progress(running, 3)
    await asyncio.sleep(0)
    assert not later.done()
    off.release(running)
    assert (await asyncio.wait_for(later, SOON)).upstream.url == "http://a"


async def test_handoff_keeps_order_and_skips_a_request_that_excludes_the_upstream() -> None:
    sched = scheduler("http://a", "http://b")
    on_a = await sched.acquire(True, (), frozenset(), 4)
    on_b = await sched.acquire(True, (), frozenset(), 40)
    assert {on_a.upstream.url, on_b.upstream.url} == {"http://a", "http://b"}
    not_a = await waiting(sched, exclude=frozenset({on_a.upstream.url}))  # failing over from it
    anyone = await waiting(sched)
    sched.progress(on_a, 2)
    lease = await asyncio.wait_for(anyone, SOON)
    assert lease.upstream is on_a.upstream
    assert not not_a.done()
    sched.release(on_b)  # B frees: the oldest request that may go there gets it
    assert (await asyncio.wait_for(not_a, SOON)).upstream is on_b.upstream


LONG = tuple(f"k{i}" for i in range(6))  # six matching 256-character blocks
SHORT = ("s1",)


async def test_a_long_prefix_waits_for_its_owner_then_goes_anywhere() -> None:
    sched = scheduler("http://a", "http://b", affinity_wait=0.2)
    first = await sched.acquire(True, LONG, frozenset(), None)  # the prefix now lives there
    owner = first.upstream
    other = next(u for u in sched.members() if u is not owner)
    same = asyncio.create_task(sched.acquire(True, LONG, frozenset(), None))
    await asyncio.sleep(0)
    assert not same.done()  # waits for the owner although the other upstream is free
    anywhere = await asyncio.wait_for(sched.acquire(True, SHORT, frozenset(), None), SOON)
    assert anywhere.upstream is other  # requests that wait for nothing are not held up
    sched.release(anywhere)
    sched.release(first)  # the owner frees: the waiting request gets it
    lease = await asyncio.wait_for(same, SOON)
    assert lease.upstream is owner

    late = asyncio.create_task(sched.acquire(True, LONG, frozenset(), None))
    await asyncio.sleep(0)  # it runs until it waits: for the owner, not the free upstream
    assert not late.done()
    lease2 = await asyncio.wait_for(late, SOON)  # after affinity_wait: the free upstream
    assert lease2.upstream is other


async def test_owner_waiters_never_make_free_slots_answer_429() -> None:
    sched = scheduler("http://a", "http://b", affinity_wait=5.0, buffer_size=1)
    first = await sched.acquire(True, LONG, frozenset(), None)
    waiting = asyncio.create_task(sched.acquire(True, LONG, frozenset(), None))
    await asyncio.sleep(0)
    assert sched.buffer.full()
    served = await asyncio.wait_for(sched.acquire(True, LONG, frozenset(), None), SOON)
    assert served.upstream is not first.upstream  # a free slot, not "buffer full"
    for lease in (first, served):
        sched.release(lease)
    sched.release(await asyncio.wait_for(waiting, SOON))


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
