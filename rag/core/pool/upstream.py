"""What the pool knows of one upstream ``llama-server``: health, slots, requests in flight.

Slot accounting: the slots this pool's own requests hold (``in_flight``) are counted exactly, at
once, as it hands them out and gets them back, so that a burst of requests does not all land on
the upstream that looked free at the last poll, and a freed slot is seen free at once. Polls of
``/slots`` add only what the pool cannot count itself: slots busy with other clients' requests
(``foreign``: busy slots beyond the most this pool held there while the poll was under way). An
earlier version added a poll's count to the changes since it was sent: a request handed out
while the poll was under way could be counted twice, hiding a free slot until the next poll.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from rag.core.pool.policy import Candidate


class UpstreamState(enum.StrEnum):
    UNKNOWN = "unknown"  # registered, not polled yet
    LOADING = "loading"  # /health answers 503: the model is loading
    HEALTHY = "healthy"
    UNREACHABLE = "unreachable"  # the last poll could not connect or got an unexpected answer
    QUARANTINED = "quarantined"  # connect errors on requests: not chosen for a while


@dataclass
class Upstream:
    url: str
    state: UpstreamState = UpstreamState.UNKNOWN
    slots_total: int = 0
    foreign: int = 0  # busy slots in the last /slots answer not held by this pool's requests
    in_flight: int = 0  # slot-taking requests of this pool on this upstream now
    held_since_poll: int = 0  # most slots this pool held here since the current poll was sent
    poll_sent_at: float = 0.0  # monotonic time the current (or last) poll was sent
    requests: int = 0  # all requests of this pool on this upstream now (slot-taking or not)
    handed: int = 0  # slot-taking requests this pool has sent here, in all (the poller's clock)
    quiet: bool = False  # polled with /health only: idle, so that it may sleep (poller.py)
    hushed_until: float = 0.0  # /health only until then: a request abandoned (requesting.py)
    slots_endpoint: bool = True  # False when /slots is disabled: only local counting remains
    quarantined_until: float = 0.0
    draining: bool = False
    last_error: str | None = None
    errors: int = 0
    model: str | None = None
    props: dict[str, Any] = field(default_factory=dict, repr=False)
    auth: dict[str, str] = field(default_factory=dict, repr=False)  # its API key, on every call

    @property
    def slots_busy(self) -> int:
        foreign = self.foreign if self.slots_endpoint else 0
        return max(self.in_flight, min(self.slots_total, self.in_flight + foreign))

    def usable(self, now: float) -> bool:
        return (
            self.state is UpstreamState.HEALTHY
            and not self.draining
            and self.quarantined_until <= now
            and self.slots_total > 0
        )

    def effective_state(self, now: float) -> UpstreamState:
        if self.quarantined_until > now:
            return UpstreamState.QUARANTINED
        return self.state

    def candidate(self) -> Candidate:
        return Candidate(self.url, self.slots_total, self.slots_busy, self.in_flight)

    def took_slot(self) -> None:
        self.in_flight += 1
        self.handed += 1
        self.held_since_poll = max(self.held_since_poll, self.in_flight)

    def gave_slot(self) -> None:
        self.in_flight -= 1

    def poll_sent(self, now: float = 0.0) -> None:
        self.held_since_poll = self.in_flight
        self.poll_sent_at = now

    def only_foreign_full(self) -> bool:
        """Whether only other clients' load (as of the last poll) keeps this pool off a slot
        here: that load may have ended since, and a fresh poll would show the slot free."""
        return self.slots_endpoint and self.foreign > 0 and self.in_flight < self.slots_total

    def polled(self, busy: int, total: int) -> None:
        """A /slots answer: ``busy`` of ``total`` slots were processing when the server read it,
        at a moment when this pool held between its current and its highest count since the
        poll was sent; the rest is foreign load (counted low rather than high)."""
        self.slots_total = total
        self.foreign = max(0, busy - self.held_since_poll)

    def status(self, now: float) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.effective_state(now).value,
            "draining": self.draining,
            "slots_total": self.slots_total,
            "slots_busy": self.slots_busy,
            "slots_free": max(0, self.slots_total - self.slots_busy),
            "requests_in_flight": self.requests,
            "quiet": self.quiet,
            "model": self.model,
            "errors": self.errors,
            "last_error": self.last_error,
            "quarantined_for": round(max(0.0, self.quarantined_until - now), 3),
        }
