"""The ``Pool``: the in-process API over a set of upstream ``llama-server`` processes.

It owns the membership, one poller task per upstream (``poller.py``) and the scheduler of slot
leases (``scheduler.py``: policy, waiting buffer, prefix affinity). ``request`` and ``stream``
fail over to another upstream on transport errors and 5xx answers as long as nothing has been
handed to the caller; slots are given back in ``finally`` blocks, so cancellation frees them
(one given up before its answer's head, after ``ABANDONED_HUSH``).
Each request is made for a tenant (``tenant=``, else the request's own: ``tenant.py``), which
the buffer serves in turn with the others when slots are short.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from rag.core.errors import NotFound, UpstreamFailed, UpstreamUnavailable
from rag.core.pool.budget import token_budget
from rag.core.pool.client import PoolClient
from rag.core.pool.errors import UpstreamRejected
from rag.core.pool.metrics import PoolMetrics
from rag.core.pool.observe import generation_timings, observe
from rag.core.pool.opening import Headers, Opening, R, with_auth, with_raw_auth
from rag.core.pool.policy import check_policy
from rag.core.pool.poller import run_poller
from rag.core.pool.scheduler import Lease, Scheduler
from rag.core.pool.tenant import resolve_tenant
from rag.core.pool.transport import Answer
from rag.core.pool.upstream import Upstream, UpstreamState

log = logging.getLogger(__name__)

SLOT_PATHS = frozenset(
    {"/completion", "/completions", "/v1/completions", "/chat/completions",
     "/v1/chat/completions", "/v1/responses", "/responses", "/v1/messages", "/infill",
     "/embedding", "/embeddings", "/v1/embeddings", "/rerank", "/reranking", "/v1/rerank",
     "/v1/reranking", "/v1/audio/transcriptions", "/audio/transcriptions", "/v1/systemone"}
)  # fmt: skip
"""llama-server's routes whose requests run in a slot (generation, embeddings, reranking): the
rest (tokenize, props, slots, metrics, token counting, lora adapters, ...) take none."""
ABANDONED_HUSH = 1.5
"""Seconds a slot stays counted busy, and its upstream polled by ``/health`` only, after a
request there was given up before its answer's head (a client gone, a caller's timeout): long
enough for llama-server to notice the closed connection. It looks for one only when a whole
second (``HTTP_POLLING_SECONDS``) passes in which no task of the server ends, and a ``/slots``
poll is such a task: polled every round, an abandoned non-streamed generation ran to its end."""
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
_RETRYABLE = (*_CONNECT_ERRORS, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def needs_slot(path: str) -> bool:
    """Whether a request on ``path`` occupies a slot of the llama-server while it runs."""
    return path.split("?", 1)[0] in SLOT_PATHS


def _prefix(key: str | Sequence[str] | None) -> tuple[str, ...]:
    if key is None:
        return ()
    return (key,) if isinstance(key, str) else tuple(key)


class Pool:
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

    # --- requests --------------------------------------------------------------------------------

    def _failed(self, upstream: Upstream, kind: str, message: str) -> None:
        upstream.errors += 1
        upstream.last_error = message
        self.metrics.upstream_errors.labels(self.name, upstream.url, kind).inc()
        self._wake_poller(upstream.url)

    def _sender(
        self, method: str, path: str, json: Any, content: bytes | None, headers: Headers | None
    ) -> Callable[[Upstream], Awaitable[httpx.Response]]:
        """The request through httpx's API, to the upstream it is given."""

        def send(upstream: Upstream) -> Awaitable[httpx.Response]:
            return self.http.open(
                method, upstream.url + path, json=json, content=content,
                headers=with_auth(headers, upstream.auth),
            )  # fmt: skip

        return send

    async def _open(
        self,
        path: str,
        send: Callable[[Upstream], Awaitable[R]],
        *,
        json: Any,
        prefix_key: str | Sequence[str] | None,
        budget: int | None,
        read_body: bool,
        tenant: str | None,
    ) -> tuple[Lease, R]:
        """Send the request (``send``), failing over until an upstream answers below 500."""
        slot = needs_slot(path)
        prefix = _prefix(prefix_key)
        for_tenant = resolve_tenant(tenant)
        if budget is None:
            budget = token_budget(json)
        tried: set[str] = set()
        last: str = "no upstream answered"
        answered: UpstreamRejected | None = None  # the last upstream's own 5xx answer
        while True:
            if tried and tried.issuperset(self.scheduler.urls()):
                if answered is not None:  # every upstream answered 5xx: pass the last one on
                    raise answered  # (llama-server's own 500 for a bad request, not a 502)
                raise UpstreamFailed(f"every upstream of pool {self.name} failed: {last}")
            lease = await self.scheduler.acquire(slot, prefix, frozenset(tried), budget, for_tenant)
            upstream = lease.upstream
            started = time.perf_counter()
            response: R | None = None
            try:
                response = await send(upstream)
                if response.status_code < 500 and read_body:
                    await response.aread()
            except _RETRYABLE as exc:
                if response is not None:
                    await response.aclose()
                self.scheduler.release(lease)
                last = f"{type(exc).__name__} from {upstream.url}"
                answered = None
                if isinstance(exc, _CONNECT_ERRORS):
                    upstream.quarantined_until = time.monotonic() + self.quarantine
                self._failed(upstream, type(exc).__name__, last)
                tried.add(upstream.url)
                self.metrics.failovers.labels(self.name).inc()
                continue
            except httpx.TimeoutException as exc:
                if response is not None:
                    await response.aclose()
                self.scheduler.release(lease)
                self._failed(upstream, type(exc).__name__, f"{type(exc).__name__}")
                raise UpstreamUnavailable(
                    f"upstream {upstream.url} timed out", retry_after=self.quarantine
                ) from exc
            except httpx.HTTPError as exc:
                if response is not None:
                    await response.aclose()
                self.scheduler.release(lease)
                self._failed(upstream, type(exc).__name__, f"{type(exc).__name__}")
                raise UpstreamFailed(
                    f"request to an upstream failed: {type(exc).__name__}"
                ) from exc
            except BaseException:
                if response is not None:
                    await response.aclose()
                    self.scheduler.release(lease)
                elif slot:  # given up before the answer: the upstream may not know yet
                    self._abandoned(lease)
                else:
                    self.scheduler.release(lease)
                raise
            status = response.status_code
            counted = self._answered.get((upstream.url, status))
            if counted is None:
                counted = self.metrics.requests.labels(self.name, upstream.url, str(status))
                self._answered[upstream.url, status] = counted
            counted.inc()
            if status < 400:
                if not read_body:
                    sse = response.headers.get("content-type", "").startswith("text/event-stream")
                    observe(
                        response,
                        started=started,
                        on_first_chunk=self._ttft.observe if sse else None,
                        on_timings=self._record_timings,
                        on_events=(
                            functools.partial(self.scheduler.progress, lease)
                            if sse and lease.budget is not None
                            else None
                        ),
                    )
                return lease, response
            try:
                body = await response.aread()
            except httpx.HTTPError:
                body = b""
            finally:
                await response.aclose()
                self.scheduler.release(lease)
            if status < 500 or status == 501:  # the request itself is wrong, or not supported
                raise UpstreamRejected(
                    status, body, response.headers.get("content-type"), response.headers.raw
                )
            last = f"HTTP {status} from {upstream.url}"
            answered = UpstreamRejected(
                status, body, response.headers.get("content-type"), response.headers.raw
            )
            if status == 503:
                upstream.state = UpstreamState.LOADING
            self._failed(upstream, f"http_{status}", last)
            tried.add(upstream.url)
            self.metrics.failovers.labels(self.name).inc()

    def _abandoned(self, lease: Lease) -> None:
        """``lease``'s request was given up before its answer's head: its slot stays counted
        busy, and its upstream unpolled by ``/slots``, for ``ABANDONED_HUSH`` seconds."""
        upstream = lease.upstream
        upstream.hushed_until = max(upstream.hushed_until, time.monotonic() + ABANDONED_HUSH)
        asyncio.get_running_loop().call_later(ABANDONED_HUSH, self.scheduler.release, lease)

    def _record_timings(self, tokens_per_second: float, tokens: int) -> None:
        self._tokens_per_second.observe(tokens_per_second)
        self._tokens_generated.inc(tokens)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Headers | None = None,
        prefix_key: str | Sequence[str] | None = None,
        budget: int | None = None,
        tenant: str | None = None,
    ) -> httpx.Response:
        """Send a request and return the whole answer (status below 400).

        ``tenant``: whom it is for (an API key's name); ``None``: the request being served's
        (``rag.core.pool.tenant``), else the tenant of requests without a key.
        """
        lease, response = await self._open(
            path, self._sender(method, path, json, content, headers), json=json,
            prefix_key=prefix_key, budget=budget, read_body=True, tenant=tenant,
        )  # fmt: skip
        try:
            await response.aclose()
            timings = response.content[-4096:]
            if b"predicted_per_second" in timings:
                found = generation_timings(timings)
                if found is not None:
                    self._record_timings(*found)
        finally:
            self.scheduler.release(lease)
        return response

    def stream(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Headers | None = None,
        prefix_key: str | Sequence[str] | None = None,
        budget: int | None = None,
        tenant: str | None = None,
    ) -> Opening[httpx.Response]:
        """``async with pool.stream(...) as response``: an opened upstream response (status
        below 400) whose body the caller reads; the slot is given back at the block's end.

        ``budget``: the most tokens the request may generate, when ``json`` does not say it
        (``n_predict``, ``max_tokens``); it lets the pool see the slot about to free.
        ``tenant``: as for ``request``.
        """
        send = self._sender(method, path, json, content, headers)
        return self._opening(path, send, json, prefix_key, budget, tenant)

    def forward(
        self,
        method: str,
        path: str,
        *,
        content: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        prefix_key: Sequence[str] = (),
        budget: int | None = None,
        tenant: str | None = None,
    ) -> Opening[Answer] | Opening[httpx.Response]:
        """``stream`` for a proxy: ``headers`` go as they are and the answer comes as the
        upstream sent it (``PoolClient.exchange``: no httpx objects on the way)."""
        if not self.http.raw:  # another transport (tests): httpx's way
            return self.stream(
                method, path, content=content or None, headers=headers, prefix_key=prefix_key,
                budget=budget, tenant=tenant,
            )  # fmt: skip

        def send(upstream: Upstream) -> Awaitable[Answer]:
            return self.http.exchange(
                method, upstream.url + path, content=content,
                headers=with_raw_auth(headers, upstream.auth),
            )  # fmt: skip

        return self._opening(path, send, None, prefix_key, budget, tenant)

    def _opening(
        self,
        path: str,
        send: Callable[[Upstream], Awaitable[R]],
        json: Any,
        prefix_key: str | Sequence[str] | None,
        budget: int | None,
        tenant: str | None,
    ) -> Opening[R]:
        opening = functools.partial(
            self._open, path, send, json=json, prefix_key=prefix_key, budget=budget,
            read_body=False, tenant=tenant,
        )  # fmt: skip
        return Opening(opening, self._failed, self.scheduler.release)
