"""What the pool knows of one upstream ``llama-server``: health, slots, requests in flight.

Slot accounting: the poller sets ``polled_busy``/``slots_total`` from ``/slots``; between polls the
pool adds the slots it hands out and subtracts those it gets back (``delta``), so that a burst of
requests does not all land on the upstream that looked free at the last poll. The estimate never
falls below the slots this pool itself holds there, and never exceeds the total.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from rag.pool.policy import Candidate


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
    polled_busy: int = 0
    delta: int = 0  # slots handed out minus slots given back since the last poll answer
    in_flight: int = 0  # slot-taking requests of this pool on this upstream now
    requests: int = 0  # all requests of this pool on this upstream now (slot-taking or not)
    slots_endpoint: bool = True  # False when /slots is disabled: only local counting remains
    quarantined_until: float = 0.0
    draining: bool = False
    last_error: str | None = None
    errors: int = 0
    model: str | None = None
    props: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def slots_busy(self) -> int:
        estimate = self.polled_busy + self.delta if self.slots_endpoint else self.in_flight
        return max(self.in_flight, min(self.slots_total, estimate))

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
        self.delta += 1

    def gave_slot(self) -> None:
        self.in_flight -= 1
        self.delta -= 1

    def status(self, now: float) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.effective_state(now).value,
            "draining": self.draining,
            "slots_total": self.slots_total,
            "slots_busy": self.slots_busy,
            "slots_free": max(0, self.slots_total - self.slots_busy),
            "requests_in_flight": self.requests,
            "model": self.model,
            "errors": self.errors,
            "last_error": self.last_error,
            "quarantined_for": round(max(0.0, self.quarantined_until - now), 3),
        }
