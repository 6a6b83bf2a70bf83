"""Slot accounting of one upstream, with plain values: the pool's own slots count at once, polls
add only the load of other clients, and a request handed out during a poll is not counted
twice."""

from __future__ import annotations

from rag.core.pool.upstream import Upstream


def test_own_slots_count_at_once_both_ways() -> None:
    upstream = Upstream("http://a")
    upstream.poll_sent()
    upstream.polled(busy=0, total=2)
    upstream.took_slot()
    upstream.took_slot()
    assert upstream.slots_busy == 2
    upstream.gave_slot()  # free at once, without waiting for the next poll
    assert upstream.slots_busy == 1


def test_a_slot_taken_while_a_poll_is_under_way_is_not_counted_twice() -> None:
    upstream = Upstream("http://a")
    upstream.poll_sent()
    upstream.took_slot()  # reaches the server before it answers the poll
    upstream.polled(busy=1, total=2)
    assert (upstream.foreign, upstream.slots_busy) == (0, 1)
    upstream.gave_slot()
    assert upstream.slots_busy == 0  # the old estimate said 1 here until the next poll


def test_other_clients_load_comes_from_polls() -> None:
    upstream = Upstream("http://a")
    upstream.took_slot()
    upstream.poll_sent()
    upstream.polled(busy=3, total=4)  # ours, and two slots of someone else's
    assert (upstream.foreign, upstream.slots_busy) == (2, 3)
    upstream.took_slot()
    assert upstream.slots_busy == 4  # full
    for _ in range(3):  # more than the server has (it queues them): never below our own count
        upstream.took_slot()
    assert upstream.slots_busy == 5


def test_without_a_slots_endpoint_only_own_requests_count() -> None:
    upstream = Upstream("http://a", slots_total=2, slots_endpoint=False, foreign=2)
    upstream.took_slot()
    assert upstream.slots_busy == 1
