"""The ``Pool``: the in-process API over a set of upstream ``llama-server`` processes.

It owns the membership, one poller task per upstream (``poller.py``) and the scheduler of slot
leases (``scheduler.py``: policy, waiting buffer, prefix affinity); ``request``, ``stream`` and
``forward``, with failover, are its request path (``requesting.py``). Each request is made for a
tenant (``tenant=``, else the request's own: ``tenant.py``), which the buffer serves in turn
with the others when slots are short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from rag.core.errors import NotFound, UpstreamUnavailable
from rag.core.pool.client import PoolClient
from rag.core.pool.metrics import PoolMetrics
from rag.core.pool.policy import check_policy
from rag.core.pool.poller import run_poller
from rag.core.pool.requesting import ABANDONED_HUSH, SLOT_PATHS, Requests, needs_slot
from rag.core.pool.scheduler import Scheduler

__all__ = ["ABANDONED_HUSH", "SLOT_PATHS", "Pool", "needs_slot"]

log = logging.getLogger(__name__)


class Pool(Requests):
    def __init__(
        self,
        name: str,
        http: PoolClient,
        *,
        policy: str = "slots",
        poll_interval: float = 0.5,
        poll_quiet: float = 0.0,
        buffer_size: int = 64,
        buffer_timeout: float = 30.0,
        quarantine: float = 5.0,
        metrics: PoolMetrics | None = None,
        affinity: bool = True,
        affinity_slack: int = 1,
        handoff_tokens: int = 2,
        affinity_wait: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        self.name = name
        # the key of upstreams started with --api-key, unless add_upstream names their own
        self._api_key = api_key
        self.http = http
        self.poll_interval = poll_interval
        self.poll_quiet = poll_quiet
        self.quarantine = quarantine
        self.metrics = metrics if metrics is not None else PoolMetrics()
        self.scheduler = Scheduler(
            name,
            policy=check_policy(policy),
            buffer_size=buffer_size,
            buffer_timeout=buffer_timeout,
            quarantine=quarantine,
            poll_interval=poll_interval,
            metrics=self.metrics,
            affinity=affinity,
            affinity_slack=affinity_slack,
            handoff_tokens=handoff_tokens,
            affinity_wait=affinity_wait,
            repoll=self._wake_poller,
        )
        self._pollers: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._started = False
        # metric children looked up once (``labels`` takes a lock and hashes every time): per
        # pool, and per (upstream, status), dropped with the upstream
        self._ttft = self.metrics.ttft.labels(name)
        self._tokens_per_second = self.metrics.tokens_per_second.labels(name)
        self._tokens_generated = self.metrics.tokens_generated.labels(name)
        self._answered: dict[tuple[str, int], Any] = {}

    @property
    def policy(self) -> str:
        return self.scheduler.policy

    # --- lifecycle and membership -------------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        for url in self.scheduler.urls():
            self._start_poller(url)

    async def stop(self) -> None:
        self._started = False
        tasks = [task for task, _ in self._pollers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pollers.clear()
        self.scheduler.fail_waiters(UpstreamUnavailable(f"pool {self.name} is stopping"))

    def add_upstream(self, url: str, *, api_key: str | None = None) -> None:
        """Register ``url`` (again: its key is updated). ``api_key``: the upstream's
        ``--api-key``, sent on every request and poll (default: the pool's)."""
        url = url.rstrip("/")
        added = self.scheduler.add(url)
        upstream = self.scheduler.upstream(url)
        assert upstream is not None, url
        key = api_key or self._api_key
        upstream.auth = {"Authorization": f"Bearer {key}"} if key else {}
        if not added:
            return
        log.info("pool %s: upstream %s added", self.name, url)
        if self._started:
            self._start_poller(url)

    async def remove_upstream(self, url: str, *, drain: bool = True) -> None:
        url = url.rstrip("/")
        upstream = self.scheduler.upstream(url)
        if upstream is None:
            raise NotFound(f"no upstream {url} in pool {self.name}")
        if drain and upstream.requests > 0:
            log.info("pool %s: draining %s (%d requests)", self.name, url, upstream.requests)
        if not await self.scheduler.drain(url, wait=drain):
            return  # registered again while draining
        poller = self._pollers.pop(url, None)
        if poller is not None:
            poller[0].cancel()
            await asyncio.gather(poller[0], return_exceptions=True)
        self.scheduler.forget(url)
        self._answered = {key: child for key, child in self._answered.items() if key[0] != url}
        log.info("pool %s: upstream %s removed", self.name, url)

    @property
    def urls(self) -> list[str]:
        return self.scheduler.urls()

    def auth_headers(self, url: str) -> Mapping[str, str]:
        """The headers that carry ``url``'s API key (empty: it has none, or is unknown)."""
        upstream = self.scheduler.upstream(url)
        return upstream.auth if upstream is not None else {}

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "name": self.name,
            "policy": self.policy,
            "affinity": self.scheduler.affinity,
            "upstreams": [u.status(now) for u in self.scheduler.members()],
            "buffered": len(self.scheduler.buffer),
            "buffer_size": self.scheduler.buffer.capacity,
            "oldest_wait_seconds": round(self.scheduler.buffer.oldest_wait(), 3),
            "buffered_by_tenant": self.scheduler.buffer.waiting_by_tenant(),
        }

    def _start_poller(self, url: str) -> None:
        upstream = self.scheduler.upstream(url)
        assert upstream is not None, url
        wake = asyncio.Event()
        task = asyncio.create_task(
            run_poller(
                self.http,
                upstream,
                interval=self.poll_interval,
                wake=wake,
                on_change=self.scheduler.dispatch,  # a poll may show freed slots
                quiet=self.poll_quiet,
            ),
            name=f"pool-{self.name}-poll-{url}",
        )
        self._pollers[url] = (task, wake)

    def _wake_poller(self, url: str) -> None:
        poller = self._pollers.get(url)
        if poller is not None:
            poller[1].set()
