"""The request path of a ``Pool`` (``pool.py``): a slot lease, the request, failover.

``Requests`` is the half of ``Pool`` that serves requests (``request``, ``stream``, ``forward``);
``pool.py`` has the other half (lifecycle, membership, pollers) and the state both use. A request
fails over to another upstream on transport errors and 5xx answers as long as nothing has been
handed to the caller; its slot is given back in ``finally`` blocks, so cancellation frees it
(one given up before its answer's head, after ``ABANDONED_HUSH``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from rag.core.errors import UpstreamFailed, UpstreamUnavailable
from rag.core.pool.budget import token_budget
from rag.core.pool.client import PoolClient
from rag.core.pool.errors import UpstreamRejected
from rag.core.pool.metrics import PoolMetrics
from rag.core.pool.observe import generation_timings, observe
from rag.core.pool.opening import Headers, Opening, R, with_auth, with_raw_auth
from rag.core.pool.scheduler import Lease, Scheduler
from rag.core.pool.tenant import resolve_tenant
from rag.core.pool.transport import Answer
from rag.core.pool.upstream import Upstream, UpstreamState

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


class Requests:
    """``Pool``'s request path; the attributes below are set by ``Pool.__init__``."""

    name: str
    http: PoolClient
    quarantine: float
    metrics: PoolMetrics
    scheduler: Scheduler
    _ttft: Any
    _tokens_per_second: Any
    _tokens_generated: Any
    _answered: dict[tuple[str, int], Any]

    def _wake_poller(self, url: str) -> None:
        raise NotImplementedError

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
