"""The bounded buffer of requests waiting for a free slot, served first in, first out.

A waiter is a future that the pool resolves with the upstream it reserved a slot on; the pool
walks the buffer in order whenever a slot may have freed (a request ended, a poll answered, an
upstream joined), so waiting requests are served at once, not on a fixed tick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from rag.core.pool.upstream import Upstream


@dataclass(eq=False)
class Waiter:
    needs_slot: bool
    prefix: tuple[str, ...]
    exclude: frozenset[str]
    future: asyncio.Future[Upstream]
    enqueued: float = field(default_factory=time.monotonic)


class WaitQueue:
    """A FIFO of waiters with a fixed capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._waiters: dict[Waiter, None] = {}  # insertion-ordered, O(1) removal

    def __len__(self) -> int:
        return len(self._waiters)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(list(self._waiters))

    def full(self) -> bool:
        return len(self._waiters) >= self.capacity

    def push(self, waiter: Waiter) -> None:
        if self.full():
            raise OverflowError("buffer full")
        self._waiters[waiter] = None

    def remove(self, waiter: Waiter) -> None:
        self._waiters.pop(waiter, None)

    def oldest_wait(self) -> float:
        first = next(iter(self._waiters), None)
        return 0.0 if first is None else time.monotonic() - first.enqueued
