"""The bounded buffer of requests waiting for a free slot, served across tenants in turn.

A waiter is a future that the pool resolves with the upstream it reserved a slot on; the pool
walks the buffer in service order whenever a slot may have freed (a request ended, a poll
answered, an upstream joined), so waiting requests are served at once, not on a fixed tick.

The order is fair across tenants (API keys' names; ``fairness.py`` has the rules as pure
functions): one tenant at a time in turn, the least recently served first, first in, first out
within a tenant. The bound is global; when the buffer is full, the tenant with the most waiters
gives up its newest one to a tenant with at least two fewer (``make_room``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from rag.core.pool.fairness import displaced, service_order
from rag.core.pool.tenant import OPEN_TENANT
from rag.core.pool.upstream import Upstream

SERVED_TENANTS = 4096
"""Tenants whose last turn is remembered; one forgotten ranks as not served lately."""


@dataclass(eq=False)
class Waiter:
    needs_slot: bool
    prefix: tuple[str, ...]
    exclude: frozenset[str]
    future: asyncio.Future[Upstream]
    tenant: str = OPEN_TENANT
    enqueued: float = field(default_factory=time.monotonic)


class WaitQueue:
    """Waiters of several tenants with a fixed capacity in all."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # per tenant, insertion-ordered (O(1) removal); tenants in the order they began waiting
        self._tenants: dict[str, dict[Waiter, None]] = {}
        self._count = 0
        self._served: OrderedDict[str, int] = OrderedDict()  # tenant -> mark of its last turn
        self._turns = itertools.count()

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Waiter]:
        """The waiters in the order they are to be served (a snapshot)."""
        queues = [(tenant, list(waiters)) for tenant, waiters in self._tenants.items()]
        return iter(service_order(queues, self._served))

    def full(self) -> bool:
        return self._count >= self.capacity

    def push(self, waiter: Waiter) -> None:
        if self.full():
            raise OverflowError("buffer full")
        self._tenants.setdefault(waiter.tenant, {})[waiter] = None
        self._count += 1

    def remove(self, waiter: Waiter) -> None:
        waiters = self._tenants.get(waiter.tenant)
        if waiters is None or waiter not in waiters:
            return
        del waiters[waiter]
        self._count -= 1
        if not waiters:
            del self._tenants[waiter.tenant]

    def served(self, tenant: str) -> None:
        """``tenant`` was just given a slot: it goes last in the rotation."""
        self._served[tenant] = next(self._turns)
        self._served.move_to_end(tenant)
        if len(self._served) > SERVED_TENANTS:
            self._served.popitem(last=False)

    def make_room(self, tenant: str) -> Waiter | None:
        """In a full buffer, take out and return the waiter that gives way to a new one of
        ``tenant`` (the newest of the tenant with the most), or ``None``: the new one is
        refused."""
        counts = {t: len(waiters) for t, waiters in self._tenants.items()}
        loser = displaced(counts, tenant, self._served)
        if loser is None:
            return None
        waiter = next(reversed(self._tenants[loser]))
        self.remove(waiter)
        return waiter

    def waiting_by_tenant(self) -> dict[str, int]:
        """How many requests each tenant has waiting (tenants with none are absent)."""
        return {tenant: len(waiters) for tenant, waiters in self._tenants.items()}

    def oldest_wait(self) -> float:
        firsts = [next(iter(waiters)).enqueued for waiters in self._tenants.values()]
        return time.monotonic() - min(firsts) if firsts else 0.0
