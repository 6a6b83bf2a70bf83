"""Fairness across tenants in the pool's buffer: the pure rules with plain values, then the
scheduler with plain upstream values. Waiting requests are served one tenant at a time in turn
(the least recently served first, first in, first out within a tenant), by dispatch and by early
handoff alike; a full buffer makes room for a tenant with fewer waiters."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from rag.balancer.guard import identify, key_names
from rag.core.errors import RateLimited
from rag.core.pool.fairness import displaced, service_order
from rag.core.pool.scheduler import Lease, Scheduler
from tests.pool.test_handoff import SOON, scheduler

# --- the pure rules -----------------------------------------------------------------------------


def test_one_tenant_is_first_in_first_out() -> None:
    assert service_order([("a", [1, 2, 3])], {"a": 5}) == [1, 2, 3]


def test_tenants_take_turns_least_recently_served_first() -> None:
    queues = [("a", ["a1", "a2", "a3"]), ("b", ["b1", "b2"])]
    # a holds the slots (served last): b, never served since, goes first
    assert service_order(queues, {"a": 7}) == ["b1", "a1", "b2", "a2", "a3"]
    assert service_order(queues, {"a": 3, "b": 9}) == ["a1", "b1", "a2", "b2", "a3"]
    # neither served lately: the order they began waiting in
    assert service_order(queues, {}) == ["a1", "b1", "a2", "b2", "a3"]


def test_three_tenants_rotate() -> None:
    queues = [("a", ["a1", "a2"]), ("b", ["b1"]), ("c", ["c1", "c2"])]
    assert service_order(queues, {"a": 2, "b": 1, "c": 0}) == ["c1", "b1", "a1", "c2", "a2"]


def test_a_full_buffer_takes_room_from_the_tenant_with_the_most() -> None:
    assert displaced({"a": 4}, "b", {}) == "a"  # b has none: a gives one up
    assert displaced({"a": 3, "b": 1}, "b", {}) == "a"  # 3 >= 1 + 2
    assert displaced({"a": 2, "b": 2}, "b", {}) is None  # equal shares: the newcomer is refused
    assert displaced({"a": 2, "b": 1}, "b", {}) is None  # a swap would only trade places
    assert displaced({"a": 4}, "a", {}) is None  # nobody yields to the largest itself
    assert displaced({"a": 3, "b": 3}, "c", {"a": 1, "b": 2}) == "b"  # tie: the last served
    assert displaced({}, "a", {}) is None


def test_the_balancer_names_the_key_a_request_presented() -> None:
    named = key_names({"team-a": "key-of-a", "team-b": "key-of-b"})
    assert identify("key-of-b", named) == "team-b"
    assert identify("key-of-c", named) is None and identify(None, named) is None
    assert identify("second", key_names(["first", "second"])) == "key-2"  # a list: by position


# --- the scheduler ------------------------------------------------------------------------------


async def queued(
    sched: Scheduler, tenant: str, log: list[str], name: str, *, grows: bool = True
) -> asyncio.Task[Lease]:
    """A request of ``tenant`` that waits in the buffer; ``log`` gets ``name`` when it is served.
    ``grows``: the buffer has one more waiter (not when it was full and made room)."""
    before = len(sched.buffer)

    async def run() -> Lease:
        lease = await sched.acquire(True, (), frozenset(), None, tenant)
        log.append(name)
        return lease

    task = asyncio.create_task(run())
    await asyncio.sleep(0)
    assert len(sched.buffer) == before + grows
    return task


async def serve_one_by_one(
    sched: Scheduler, running: Lease, tasks: list[asyncio.Task[Lease]]
) -> None:
    """Release ``running``, then each request as it is served, until all were (one slot)."""
    pending, lease = set(tasks), running
    while pending:
        sched.release(lease)
        done, pending = await asyncio.wait(pending, timeout=SOON, return_when="FIRST_COMPLETED")
        assert len(done) == 1, "one slot: one request at a time"
        lease = done.pop().result()
    sched.release(lease)


async def test_a_burst_of_one_tenant_does_not_starve_another() -> None:
    sched = scheduler("http://a")  # one slot
    served: list[str] = []
    running = await sched.acquire(True, (), frozenset(), None, "team-a")
    tasks = [await queued(sched, "team-a", served, f"a{n}") for n in range(2, 6)]
    tasks += [await queued(sched, "team-b", served, f"b{n}") for n in range(1, 3)]
    assert sched.buffer.waiting_by_tenant() == {"team-a": 4, "team-b": 2}
    await serve_one_by_one(sched, running, tasks)
    # FIFO would have been a2 a3 a4 a5 b1 b2
    assert served == ["b1", "a2", "b2", "a3", "a4", "a5"]


async def test_early_handoff_sends_the_next_in_turn() -> None:
    sched = scheduler("http://a")
    served: list[str] = []
    running = await sched.acquire(True, (), frozenset(), 4, "team-a")
    a2 = await queued(sched, "team-a", served, "a2")
    b1 = await queued(sched, "team-b", served, "b1")
    sched.progress(running, 2)  # near its budget: its slot is handed on
    lease = await asyncio.wait_for(b1, SOON)
    assert served == ["b1"] and not a2.done()
    sched.release(running)
    sched.release(lease)
    sched.release(await asyncio.wait_for(a2, SOON))


async def test_a_full_buffer_refuses_the_newest_of_the_tenant_with_the_most() -> None:
    sched = scheduler("http://a", buffer_size=4)
    served: list[str] = []
    running = await sched.acquire(True, (), frozenset(), None, "team-a")
    a2, a3, a4, a5 = [await queued(sched, "team-a", served, f"a{n}") for n in range(2, 6)]
    assert sched.buffer.full()
    b1 = await queued(sched, "team-b", served, "b1", grows=False)
    with pytest.raises(RateLimited):
        await asyncio.wait_for(a5, SOON)  # the newest of team-a made room
    b2 = await queued(sched, "team-b", served, "b2", grows=False)
    with pytest.raises(RateLimited):
        await asyncio.wait_for(a4, SOON)  # team-a still had two more than team-b
    assert sched.buffer.waiting_by_tenant() == {"team-a": 2, "team-b": 2}
    with pytest.raises(RateLimited):  # equal shares: now the newcomer is the one refused
        await sched.acquire(True, (), frozenset(), None, "team-b")
    with pytest.raises(RateLimited):
        await sched.acquire(True, (), frozenset(), None, "team-a")
    await serve_one_by_one(sched, running, [a2, a3, b1, b2])
    assert served == ["b1", "a2", "b2", "a3"]
    assert sched.metrics.rejected.labels("test", "buffer_full")._value.get() == 4


async def test_oldest_wait_and_waiting_by_tenant_in_metrics() -> None:
    sched = scheduler("http://a")
    running = await sched.acquire(True, (), frozenset(), None, "team-a")
    first = await queued(sched, "team-a", [], "a2")
    await asyncio.sleep(0.05)
    second = await queued(sched, "team-b", [], "b1")
    assert sched.buffer.oldest_wait() >= 0.05  # the oldest of any tenant
    text = generate_latest(sched.metrics.registry).decode()
    assert 'rag_pool_buffered_requests_by_tenant{pool="test",tenant="team-a"} 1.0' in text
    assert 'rag_pool_buffered_requests_by_tenant{pool="test",tenant="team-b"} 1.0' in text
    sched.release(running)
    lease = await asyncio.wait_for(second, SOON)
    sched.release(lease)
    sched.release(await asyncio.wait_for(first, SOON))
    text = generate_latest(sched.metrics.registry).decode()
    assert 'tenant="team-a"' not in text  # nobody waits: no series left behind
    assert sched.buffer.oldest_wait() == 0.0
