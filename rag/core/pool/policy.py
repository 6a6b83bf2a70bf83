"""The choice of upstream: a pure function of plain values, no I/O and no clock.

``choose(candidates, policy, ...)`` returns the candidate a request should go to, or ``None`` when
it should wait in the buffer. Policies:

- ``slots`` (default): the upstream with the most free slots; a request never goes to an upstream
  whose slots are all busy (it waits for one instead, so it never queues inside a llama-server
  while another has a free slot). With ``affinity_urls`` set (the upstreams that recently served
  the same prompt prefix), the freest of them wins unless it has no free slot or more than
  ``affinity_slack`` fewer free slots than the best one ("much busier"); with
  ``wait_for_affinity``, when all of them are full they are waited for (in the buffer, never
  inside a llama-server) instead of evaluating the prefix again elsewhere.
- ``round-robin``: the next upstream in turn, whatever its load (a baseline for comparison).
- ``least-requests``: the upstream with the fewest requests in flight from this pool, whatever
  its slots (what nginx ``least_conn`` does; a baseline for comparison).

Requests that take no slot (``/tokenize``, ``/props``, ...) go to the least loaded candidate.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

Policy = Literal["slots", "round-robin", "least-requests"]
POLICIES: tuple[str, ...] = get_args(Policy)


@dataclass(frozen=True)
class Candidate:
    """What the policy knows of one usable upstream."""

    url: str
    slots_total: int
    slots_busy: int
    in_flight: int = 0

    @property
    def slots_free(self) -> int:
        return max(0, self.slots_total - self.slots_busy)


def check_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown pool policy {name!r}; choose one of {', '.join(POLICIES)}")
    return name  # type: ignore[return-value]


def choose(
    candidates: Sequence[Candidate],
    policy: Policy = "slots",
    *,
    needs_slot: bool = True,
    turn: int = 0,
    affinity_urls: Collection[str] = (),
    affinity_slack: int = 1,
    wait_for_affinity: bool = False,
) -> Candidate | None:
    """The candidate to send a request to, or ``None`` if it should wait.

    ``turn`` is a counter the caller increments per request: round-robin uses it, and the other
    policies use it to break ties so that equal upstreams share the load.
    ``wait_for_affinity``: when every ``affinity_urls`` upstream is full, wait for them (None)
    rather than go elsewhere; the caller decides when the prefix is worth the wait.
    """
    if not candidates:
        return None
    ordered = _rotated(candidates, turn)
    if not needs_slot:
        return min(ordered, key=lambda c: c.slots_busy + c.in_flight - c.slots_total)
    if policy == "round-robin":
        return ordered[0]
    if policy == "least-requests":
        return min(ordered, key=lambda c: c.in_flight)
    holders = [c for c in ordered if c.url in affinity_urls]
    if wait_for_affinity and holders and all(c.slots_free == 0 for c in holders):
        return None  # worth waiting for an upstream that holds the prefix
    free = [c for c in ordered if c.slots_free > 0]
    if not free:
        return None
    best = max(free, key=_freest)
    free_holders = [c for c in holders if c.slots_free > 0]
    if free_holders:
        owner = max(free_holders, key=_freest)
        if best.slots_free - owner.slots_free <= affinity_slack:
            return owner
    return best


def _freest(candidate: Candidate) -> tuple[int, int]:
    return candidate.slots_free, -candidate.in_flight


def _rotated(candidates: Sequence[Candidate], turn: int) -> list[Candidate]:
    start = turn % len(candidates)
    return [*candidates[start:], *candidates[:start]]
