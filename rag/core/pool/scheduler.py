"""The scheduler: which upstream gets a request, when, and the buffer of those that wait.

It holds the slot leases of one pool: ``acquire`` returns a lease on an upstream on which a slot
has been reserved for the caller (at once, or after waiting in the bounded buffer),
``release`` gives it back and hands the freed slot to the next waiting request. The choice
itself is ``policy.choose``; the upstreams' state comes from the pool's pollers.

Fairness: each request is made for a tenant (an API key's name). The buffer serves waiting
requests one tenant at a time in turn, first in, first out within a tenant (``buffer.py``,
``fairness.py``); "the next waiting request" below is the next in that order. A full buffer
makes room for a tenant with fewer waiters by refusing the newest of the tenant with the most.

Early handoff: a slot freed in a llama-server is only seen here when the answer's stream ends,
and the next request then needs a round trip and a turn of the server's decode loop before it
starts (17 ms median on two busy cores, against 0.5 ms for a request already queued inside the
server). So when a streamed generation comes within ``handoff_tokens`` of its token budget
(``progress``), the next waiting request is sent to that upstream at once (or, if none waits
yet, the first to arrive before the generation ends), to wait in the server's own queue for the
slot about to free. Each lease hands on at most one request; the rest keep waiting here, in
order.

Waiting for the holders of a prefix (``affinity_wait``): with prefix affinity, the upstreams that
recently served a request's prompt prefix (and so hold it in their caches) may all be full while
another has a free slot. For a long shared prefix (a RAG prompt's system prompt and sources)
evaluating it again elsewhere costs more than waiting a moment, so such a request waits in the
buffer up to ``affinity_wait`` seconds for one of them, then takes any free slot. Other requests
are not held up: the buffer hands free slots to whichever waiting request may take them, in
service order. Off by default: with a few hot prefixes it keeps each on one server while others
idle.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from rag.core.errors import RateLimited, UpstreamUnavailable
from rag.core.pool.buffer import Waiter, WaitQueue
from rag.core.pool.metrics import PoolMetrics
from rag.core.pool.policy import Policy, choose
from rag.core.pool.tenant import OPEN_TENANT
from rag.core.pool.upstream import Upstream, UpstreamState

AFFINITY_ENTRIES = 16384
AFFINITY_WAIT_MIN_KEYS = 4  # matched prefix blocks (4 x 256 characters) worth waiting for
AFFINITY_HOLDERS = 4  # upstreams remembered per prefix key, most recent last
REPOLL_GAP = 0.02  # seconds between polls asked for by waiting requests (stale foreign load)


@dataclass(eq=False)
class Lease:
    """A request's hold on an upstream (and on one of its slots when ``slot``)."""

    upstream: Upstream
    slot: bool
    budget: int | None = None  # tokens it may still generate at most; None: unknown
    handed_on: bool = False  # a waiting request was already sent ahead for its slot


class Scheduler:
    def __init__(
        self,
        name: str,
        *,
        policy: Policy,
        buffer_size: int,
        buffer_timeout: float,
        quarantine: float,
        poll_interval: float,
        metrics: PoolMetrics,
        affinity: bool,
        affinity_slack: int,
        handoff_tokens: int,
        affinity_wait: float,
        repoll: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.repoll = repoll  # polls an upstream now (the pool wakes its poller)
        self.policy: Policy = policy
        self.buffer_timeout = buffer_timeout
        self.quarantine = quarantine
        self.poll_interval = poll_interval
        self.metrics = metrics
        self.affinity = affinity
        self.affinity_slack = affinity_slack
        self.handoff_tokens = handoff_tokens
        self.affinity_wait = affinity_wait
        self._upstreams: dict[str, Upstream] = {}
        self._idle: dict[str, asyncio.Event] = {}  # set when an upstream has no request left
        self.buffer = WaitQueue(buffer_size)
        self._affinity: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # key -> holders
        self._ending: dict[Lease, None] = {}  # leases near their budget, not handed on yet
        self._turn = 0
        metrics.upstreams.watch(name, self._upstreams)
        metrics.tenants.watch(name, self.buffer)

    # --- membership: the pool adds and removes, the scheduler keeps the state ------------------

    def upstream(self, url: str) -> Upstream | None:
        return self._upstreams.get(url)

    def members(self) -> list[Upstream]:
        return list(self._upstreams.values())

    def urls(self) -> list[str]:
        return list(self._upstreams)

    def add(self, url: str) -> bool:
        """Register ``url``; ``False`` when it was there already (a drain in progress ends)."""
        upstream = self._upstreams.get(url)
        if upstream is not None:
            upstream.draining = False
            self._idle[url].set()  # wakes the drain, which sees it is wanted again
            return False
        self._upstreams[url] = Upstream(url)
        self._idle[url] = asyncio.Event()
        self.dispatch()
        return True

    async def drain(self, url: str, *, wait: bool = True) -> bool:
        """Send ``url`` nothing new and (``wait``) wait until its requests are done; ``False`` if
        it was registered again meanwhile (it stays)."""
        upstream = self._upstreams[url]
        upstream.draining = True
        idle = self._idle[url]
        while wait and upstream.requests > 0 and upstream.draining:
            idle.clear()
            await idle.wait()
        return upstream.draining

    def forget(self, url: str) -> None:
        """Drop ``url`` from the membership and the affinity table."""
        self._upstreams.pop(url, None)
        self._idle.pop(url, None)
        holders = ((k, tuple(u for u in v if u != url)) for k, v in self._affinity.items())
        self._affinity = OrderedDict((k, v) for k, v in holders if v)
        self.dispatch()

    # --- leases --------------------------------------------------------------------------------

    def fail_waiters(self, error: Exception) -> None:
        for waiter in self.buffer:
            self.buffer.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def holders(self, prefix: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
        """The upstreams that recently served the longest known part of ``prefix`` (so have it
        cached), and how many of its keys matched."""
        if self.affinity:
            for matched in range(len(prefix), 0, -1):
                urls = self._affinity.get(prefix[matched - 1])
                if urls:
                    return urls, matched
        return (), 0

    def waits_for_holders(self, prefix: tuple[str, ...], waited: float) -> tuple[str, ...]:
        """The holders a request should still wait for (none: it may go anywhere): its prefix is
        long enough to be worth it and it has waited less than ``affinity_wait``."""
        urls, matched = self.holders(prefix)
        return urls if self._worth_waiting(matched, waited) else ()

    def _may_take(self, waiter: Waiter, url: str, now: float) -> bool:
        """Whether ``waiter`` may go to ``url``: not excluded, and not waiting for other holders
        of its prefix."""
        if url in waiter.exclude:
            return False
        holders = self.waits_for_holders(waiter.prefix, now - waiter.enqueued)
        return not holders or url in holders

    def _worth_waiting(self, matched_keys: int, waited: float) -> bool:
        return matched_keys >= AFFINITY_WAIT_MIN_KEYS and waited < self.affinity_wait

    def pick(
        self, slot: bool, prefix: tuple[str, ...], exclude: frozenset[str], waited: float = 0.0
    ) -> Upstream | None:
        now = time.monotonic()
        usable = [u for u in self._upstreams.values() if u.usable(now) and u.url not in exclude]
        holders, matched = self.holders(prefix)
        chosen = choose(
            [u.candidate() for u in usable],
            self.policy,
            needs_slot=slot,
            turn=self._turn,
            affinity_urls=holders,
            affinity_slack=self.affinity_slack,
            wait_for_affinity=slot and self._worth_waiting(matched, waited),
        )
        if chosen is None:
            return None
        self._turn += 1
        return self._upstreams[chosen.url]

    def reserve(
        self, upstream: Upstream, slot: bool, prefix: tuple[str, ...], tenant: str = OPEN_TENANT
    ) -> None:
        upstream.requests += 1
        if slot:
            upstream.took_slot()
            self.buffer.served(tenant)
        if self.affinity:
            for key in prefix:
                urls = tuple(u for u in self._affinity.get(key, ()) if u != upstream.url)
                self._affinity[key] = (*urls, upstream.url)[-AFFINITY_HOLDERS:]
                self._affinity.move_to_end(key)
            while len(self._affinity) > AFFINITY_ENTRIES:
                self._affinity.popitem(last=False)

    def release(self, lease: Lease) -> None:
        self._ending.pop(lease, None)
        upstream = lease.upstream
        upstream.requests -= 1
        if lease.slot:
            upstream.gave_slot()
        idle = self._idle.get(upstream.url)
        if upstream.requests == 0 and idle is not None:
            idle.set()
        self.dispatch()

    def dispatch(self) -> None:
        """Hand free slots to waiting requests, in turn across tenants."""
        if not len(self.buffer):
            return
        now = time.monotonic()
        for waiter in self.buffer:
            if waiter.future.done():
                self.buffer.remove(waiter)
                continue
            waited = now - waiter.enqueued
            upstream = self.pick(waiter.needs_slot, waiter.prefix, waiter.exclude, waited)
            if upstream is None:
                continue
            self._grant(waiter, upstream)
        self.metrics.buffered.labels(self.name).set(len(self.buffer))

    def _grant(self, waiter: Waiter, upstream: Upstream) -> None:
        """Take ``waiter`` out of the buffer with a reservation on ``upstream``."""
        self.buffer.remove(waiter)
        self.reserve(upstream, waiter.needs_slot, waiter.prefix, waiter.tenant)
        waiter.future.set_result(upstream)

    def progress(self, lease: Lease, tokens: int) -> None:
        """``tokens`` more were streamed on ``lease``: near its end, hand its slot on early."""
        if lease.budget is None or lease.handed_on:
            return
        lease.budget -= tokens
        if lease.budget <= self.handoff_tokens:
            self._ending[lease] = None
            self.hand_on()

    def hand_on(self) -> None:
        """Send the next waiting requests ahead to the slots about to free (``_ending``)."""
        if not self._ending or not len(self.buffer):
            return
        now = time.monotonic()
        for lease in list(self._ending):
            upstream = lease.upstream
            if not upstream.usable(now):
                continue
            waiter = next(
                (w for w in self.buffer
                 if not w.future.done() and w.needs_slot and self._may_take(w, upstream.url, now)),
                None,
            )  # fmt: skip
            if waiter is None:
                continue
            del self._ending[lease]
            lease.handed_on = True
            self._grant(waiter, upstream)
            self.metrics.handoffs.labels(self.name).inc()
            if not len(self.buffer):
                break
        self.metrics.buffered.labels(self.name).set(len(self.buffer))

    def _repoll_stale(self) -> None:
        """Poll now the upstreams where only other clients' load, as the last poll saw it, kept
        this request from a slot: that load may have ended since (a burst of direct requests
        just finished), and waiting for the next round would leave a free slot idle for up to
        ``poll_interval`` while this request waits. At most one such poll per ``REPOLL_GAP``."""
        if self.repoll is None:
            return
        now = time.monotonic()
        for upstream in self._upstreams.values():
            if (
                upstream.usable(now)
                and upstream.only_foreign_full()
                and now - upstream.poll_sent_at >= REPOLL_GAP
            ):
                self.repoll(upstream.url)

    def _make_room(self, tenant: str) -> None:
        """Room in the full buffer for a request of ``tenant``: the newest waiter of the tenant
        with the most is refused in its place, or else this request is (429 either way)."""
        self.metrics.rejected.labels(self.name, "buffer_full").inc()
        error = RateLimited(f"all slots of pool {self.name} are busy and its buffer is full")
        waiter = self.buffer.make_room(tenant)
        if waiter is None:
            raise error
        if not waiter.future.done():
            waiter.future.set_exception(error)

    def _slot_free(self) -> bool:
        now = time.monotonic()
        return any(u.usable(now) and u.candidate().slots_free > 0 for u in self._upstreams.values())

    def none_can_serve(self, exclude: frozenset[str]) -> float | None:
        """Seconds to suggest retrying after if no upstream could serve soon, else None."""
        members = [u for u in self._upstreams.values() if not u.draining and u.url not in exclude]
        if not members:
            return self.quarantine
        if all(u.state is UpstreamState.UNREACHABLE for u in members):
            return max(1.0, self.poll_interval)
        return None

    async def acquire(
        self,
        slot: bool,
        prefix: tuple[str, ...],
        exclude: frozenset[str],
        budget: int | None = None,
        tenant: str = OPEN_TENANT,
    ) -> Lease:
        """A lease on an upstream for a request, waiting in the buffer for a slot if need be.

        ``budget`` is the most tokens the request may generate (for early handoff), if known;
        ``tenant`` whom it is for (fairness in the buffer).
        """
        upstream = await self._reserved(slot, prefix, exclude, tenant)
        return Lease(upstream, slot, budget if slot and self.handoff_tokens > 0 else None)

    async def _reserved(
        self, slot: bool, prefix: tuple[str, ...], exclude: frozenset[str], tenant: str
    ) -> Upstream:
        retry_after = self.none_can_serve(exclude)
        if retry_after is not None:
            raise UpstreamUnavailable(
                f"no upstream in pool {self.name} can take the request", retry_after=retry_after
            )
        if not slot or len(self.buffer) == 0:  # requests without a slot never wait for one
            upstream = self.pick(slot, prefix, exclude)
            if upstream is not None:
                self.reserve(upstream, slot, prefix, tenant)
                return upstream
        if self.buffer.full():
            # requests waiting for their prefix's owner may fill it while slots are free
            upstream = self.pick(slot, prefix, exclude, waited=self.affinity_wait)
            if upstream is not None:
                self.reserve(upstream, slot, prefix, tenant)
                return upstream
            self._make_room(tenant)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Upstream] = loop.create_future()
        waiter = Waiter(slot, prefix, exclude, future, tenant)
        self.buffer.push(waiter)
        if slot and self.waits_for_holders(prefix, 0.0):
            loop.call_later(self.affinity_wait, self.dispatch)  # then any upstream will do
        if self._slot_free():  # older requests may be waiting for their prefix's holders
            self.dispatch()
        self.hand_on()  # a generation already near its end can take it
        self._repoll_stale()
        self.metrics.buffered.labels(self.name).set(len(self.buffer))
        try:
            async with asyncio.timeout(self.buffer_timeout):
                return await future
        except BaseException as exc:
            self.buffer.remove(waiter)
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(Lease(future.result(), slot))
            if isinstance(exc, TimeoutError):
                self.metrics.rejected.labels(self.name, "buffer_timeout").inc()
                raise UpstreamUnavailable(
                    f"no slot of pool {self.name} freed within {self.buffer_timeout:g} s",
                    retry_after=max(1.0, self.buffer_timeout / 4),
                ) from None
            raise
        finally:
            self.metrics.buffered.labels(self.name).set(len(self.buffer))
            self.metrics.buffer_wait.labels(self.name).observe(time.monotonic() - waiter.enqueued)
