"""Fairness across tenants in the pool's buffer: pure functions of plain values, no clock.

A tenant is whoever requests are made for: an API key's name (the team), or one tenant for every
request without a key (``rag.core.pool.tenant.OPEN_TENANT``). When slots are short:

- **Order** (:func:`service_order`): the waiting requests are served one tenant at a time in
  turn, first in, first out within a tenant. The tenant served least recently goes first (one
  that has not been served lately, like a team whose first request arrives behind another team's
  burst, comes before the team whose requests hold the slots); after each grant that tenant goes
  last. Taking the waiters in this order is the same as rotating after every grant.
- **Room** (:func:`displaced`): the buffer's bound is global (``buffer_size``). A tenant alone may
  fill it. When it is full, a request whose tenant has at least two fewer waiting requests than
  the tenant with the most still gets in: that tenant's newest waiting request is refused
  instead (429, as a full buffer answers). A full buffer so tends to equal shares between the
  tenants that want it, and one team's burst cannot keep another team out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain, zip_longest
from typing import TypeVar

W = TypeVar("W")

NEVER = -1
"""The last-served mark of a tenant not served lately: it ranks before every other."""


def service_order(
    queues: Sequence[tuple[str, Sequence[W]]], last_served: Mapping[str, int]
) -> list[W]:
    """The waiting requests in the order they are to be served.

    ``queues``: each waiting tenant with its requests, oldest first, tenants in the order they
    began waiting (which breaks ties). ``last_served``: a mark per tenant that grows with every
    grant (a counter); tenants without one rank first. Round one takes every tenant's oldest
    request, the least recently served tenant first, round two their second, and so on.
    """
    if len(queues) == 1:
        return list(queues[0][1])
    ranked = sorted(queues, key=lambda queue: last_served.get(queue[0], NEVER))
    missing = object()
    rounds = zip_longest(*(waiters for _, waiters in ranked), fillvalue=missing)
    return [w for w in chain.from_iterable(rounds) if w is not missing]  # type: ignore[misc]


def displaced(counts: Mapping[str, int], tenant: str, last_served: Mapping[str, int]) -> str | None:
    """The tenant that gives up its newest waiting request so that one of ``tenant`` fits in a
    full buffer, or ``None``: the newcomer is refused.

    ``counts``: waiting requests per tenant. The tenant with the most yields when it has at
    least two more than ``tenant`` (with one more, the swap would only trade places); of equal
    ones, the one served most recently.
    """
    if not counts:
        return None
    largest = max(counts, key=lambda t: (counts[t], last_served.get(t, NEVER)))
    if largest != tenant and counts[largest] >= counts.get(tenant, 0) + 2:
        return largest
    return None
