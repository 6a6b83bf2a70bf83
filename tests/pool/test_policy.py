"""The pure choice of an upstream, with plain values."""

from __future__ import annotations

import pytest

from rag.core.pool.policy import Candidate, check_policy, choose
from rag.core.pool.prefix import prefix_chain, request_prefix

A = "http://a"
B = "http://b"
C = "http://c"


def cands(*busy: int, total: int = 2, in_flight: tuple[int, ...] | None = None) -> list[Candidate]:
    urls = [A, B, C][: len(busy)]
    flights = in_flight or (0,) * len(busy)
    return [Candidate(u, total, b, f) for u, b, f in zip(urls, busy, flights, strict=True)]


def test_slots_picks_most_free_slots() -> None:
    chosen = choose(cands(2, 0, 1, total=4))
    assert chosen is not None
    assert chosen.url == B


def test_slots_returns_none_when_all_busy() -> None:
    assert choose(cands(2, 2)) is None


def test_no_candidates() -> None:
    assert choose([]) is None
    assert choose([], "round-robin") is None


def test_slots_ties_rotate_with_turn() -> None:
    picks = [choose(cands(0, 0), turn=t) for t in range(4)]
    assert [p.url for p in picks if p] == [A, B, A, B]


def test_slots_tie_prefers_fewer_requests_in_flight() -> None:
    chosen = choose(cands(1, 1, in_flight=(1, 0)))
    assert chosen is not None
    assert chosen.url == B


def test_round_robin_ignores_load() -> None:
    picks = [choose(cands(2, 0), "round-robin", turn=t) for t in range(3)]
    assert [p.url for p in picks if p] == [A, B, A]


def test_least_requests_ignores_slots() -> None:
    chosen = choose(cands(0, 2, in_flight=(3, 1)), "least-requests")
    assert chosen is not None
    assert chosen.url == B


def test_affinity_wins_unless_much_busier() -> None:
    # the owner has one free slot, the best two: within the slack of one slot
    chosen = choose(cands(1, 0), affinity_urls=(A,))
    assert chosen is not None
    assert chosen.url == A
    # the owner is full: go elsewhere rather than wait
    chosen = choose(cands(2, 0), affinity_urls=(A,))
    assert chosen is not None
    assert chosen.url == B
    # much busier: 1 free of 8 against 8 free
    chosen = choose(cands(7, 0, total=8), affinity_urls=(A,), affinity_slack=2)
    assert chosen is not None
    assert chosen.url == B


def test_a_full_owner_is_waited_for_only_when_asked() -> None:
    assert choose(cands(2, 0), affinity_urls=(A,), wait_for_affinity=True) is None
    chosen = choose(cands(1, 0), affinity_urls=(A,), wait_for_affinity=True)  # a slot free there
    assert chosen is not None and chosen.url == A
    chosen = choose(cands(2, 0), affinity_urls=("http://gone",), wait_for_affinity=True)
    assert chosen is not None and chosen.url == B  # an owner that is not usable is not waited for


def test_any_free_holder_of_the_prefix_will_do() -> None:
    # A (full) and B (one free) both hold the prefix, C is idle: B, and nothing to wait for
    chosen = choose(cands(2, 1, 0), affinity_urls=(A, B), wait_for_affinity=True)
    assert chosen is not None and chosen.url == B
    assert choose(cands(2, 2, 0), affinity_urls=(A, B), wait_for_affinity=True) is None


def test_affinity_to_unknown_upstream_falls_back() -> None:
    chosen = choose(cands(1, 0), affinity_urls=("http://gone",))
    assert chosen is not None
    assert chosen.url == B


def test_requests_without_slot_go_to_least_loaded_even_if_full() -> None:
    chosen = choose(cands(2, 2, in_flight=(2, 1)), needs_slot=False)
    assert chosen is not None
    assert chosen.url == B


def test_check_policy() -> None:
    assert check_policy("slots") == "slots"
    with pytest.raises(ValueError, match="unknown pool policy"):
        check_policy("random")


def test_prefix_chain_shares_leading_keys() -> None:
    shared = "s" * 600
    one = prefix_chain(shared + "question one?" + "x" * 300)
    two = prefix_chain(shared + "another question" + "y" * 300)
    assert len(one) == 3
    assert one[:2] == two[:2]
    assert one[2] != two[2]
    assert prefix_chain("short") == ()


def test_request_prefix_from_bodies() -> None:
    sources = "sources " * 100
    chat = {"messages": [{"role": "system", "content": sources}, {"role": "user", "content": "q"}]}
    assert request_prefix("/v1/chat/completions", chat)
    parts = {"messages": [{"role": "system", "content": [{"type": "text", "text": sources}]}]}
    assert (
        request_prefix("/v1/chat/completions", parts)[:2]
        == request_prefix("/v1/chat/completions", chat)[:2]
    )
    assert request_prefix("/completion", {"prompt": sources})
    assert request_prefix("/v1/completions", {"prompt": [sources]})
    assert request_prefix("/completion", {"prompt": list(range(300))})
    assert request_prefix("/completion", {"nothing": 1}) == ()
    assert request_prefix("/completion", ["not", "a", "dict"]) == ()
