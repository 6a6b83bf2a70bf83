"""The proxying part of the balancer as a plain ASGI app: the hot path, kept lean.

``ProxyApp`` passes every request on to an upstream llama-server, whatever its path and method,
except the balancer's own endpoints (``OWN``: health, metrics, pool status and membership, the
API docs), which go on to the FastAPI app. Requests on llama-server's slot routes (generation,
embeddings, reranking: ``rag.core.pool.requesting.SLOT_PATHS``) are balanced by free slots; the rest
(tokenize, props, slots, token counting, LoRA adapters, the MCP/CORS proxy, ``OPTIONS``
preflights, model names with slashes, ...) go to a healthy upstream. The path goes on as the
client sent it (``raw_path``: an encoded ``%2F`` stays encoded). For a proxied request it reads
the body, derives the prefix-affinity keys and the token budget (for
the pool's early handoff), opens the answer through ``Pool.forward`` (which fails over before the
first byte) and passes it on byte for byte. A request still running after ``WATCH_AFTER``
seconds gets a watcher task that listens for the client's disconnect and cancels the request at
once, whether it is waiting for a slot, waiting for the upstream or streaming: ``Pool.forward``
then closes the upstream response, which makes llama-server stop and free the slot. (Most
answers, a short completion or a tokenize, end sooner: a task for each of them cost more of the
balancer's added latency than the rest of this module.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.balancer.busypoll import BusyPoll
from rag.balancer.guard import TENANT, Guard
from rag.core.errors import RagError
from rag.core.pool import Pool, UpstreamRejected
from rag.core.pool.budget import token_budget
from rag.core.pool.observe import raw_chunks
from rag.core.pool.prefix import request_prefix
from rag.core.pool.requesting import SLOT_PATHS
from rag.core.pool.transport import Answer
from rag.core.requestid import reset_request_id, set_request_id
from rag.web.errors import error_response
from rag.web.limits import read_body
from rag.web.requestid import HEADER, request_id_of

log = logging.getLogger(__name__)

GENERATION_PATHS = frozenset(
    {"/completion", "/completions", "/v1/completions", "/chat/completions", "/v1/chat/completions",
     "/v1/responses", "/responses", "/v1/messages", "/infill"}
)  # fmt: skip
"""Routes whose bodies carry a prompt and a token cap (prefix affinity, early handoff)."""
OWN = frozenset(
    {("GET", "/health"), ("HEAD", "/health"), ("GET", "/metrics"), ("GET", "/v1/pool"),
     ("POST", "/v1/pool/upstreams"), ("DELETE", "/v1/pool/upstreams"), ("GET", "/docs"),
     ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"), ("GET", "/openapi.json")}
)  # fmt: skip
"""The balancer's own endpoints (method, path); every other request goes to an upstream."""
WATCH_AFTER = 0.02
"""Seconds a proxied request runs before a task watches for its client's disconnect: a client
that leaves is noticed at most this much later."""
_REQUEST_ID = HEADER.encode()
_CLIENT_CREDENTIALS = frozenset({b"authorization", b"cookie", b"x-api-key"})
"""Never passed on: an upstream gets the balancer's own key (``upstream_api_key``) instead."""
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
     b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length"}
)  # fmt: skip


OTHER_ROUTES = (
    ("post", "/tokenize"), ("post", "/detokenize"), ("post", "/apply-template"),
    ("get", "/props"), ("post", "/props"), ("get", "/models"), ("get", "/v1/models"),
    ("get", "/v1/health"), ("get", "/slots"), ("post", "/slots/{id_slot}"),
    ("get", "/lora-adapters"), ("post", "/lora-adapters"),
    ("post", "/v1/messages/count_tokens"), ("post", "/v1/chat/completions/input_tokens"),
    ("post", "/chat/completions/input_tokens"), ("post", "/v1/responses/input_tokens"),
    ("post", "/responses/input_tokens"), ("post", "/v1/chat/completions/control"),
    ("get", "/v1/stream"), ("post", "/v1/streams/lookup"), ("get", "/cors-proxy"),
    ("post", "/cors-proxy"), ("get", "/tools"), ("post", "/tools"),
)  # fmt: skip
"""llama-server 11434's routes that take no slot (server.cpp), listed in ``/docs``; any other
path is passed on too."""


_NOT_PASSED_ON = _HOP_BY_HOP | _CLIENT_CREDENTIALS


def proxied(method: str, path: str) -> bool:
    return (method, path) not in OWN


def cors_origin(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The CORS header llama-server (default ``--cors-origins '*'`` with credentials) puts on
    every answer: the request's ``Origin`` echoed back. For the balancer's own answers."""
    origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
    return [(b"access-control-allow-origin", origin)] if origin else []


class _Reply:
    """The answer to one proxied request: every head it sends carries the request id (and, for
    the balancer's own error answers, the CORS header); ``started`` once a head has gone."""

    def __init__(self, scope: Scope, send: Send, request_id: str) -> None:
        self.scope = scope
        self.send = send
        self.request_id = (_REQUEST_ID, request_id.encode())
        self.started = False

    async def head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        headers.append(self.request_id)
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, more: bool = False) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def error(self, exc: RagError, receive: Receive) -> None:
        """The error shape, as the balancer's own routes answer it."""
        extra = [self.request_id, *cors_origin(self.scope)]
        self.started = True
        await error_response(exc)(self.scope, receive, _with_headers(self.send, extra))


class ProxyApp:
    """Serves the proxied endpoints from ``pool_of.state.pool``; passes the rest to ``app``.

    On the proxied path it does itself what the middlewares do for the balancer's own routes
    (``app``), in one layer: the request id, the guard, the body limits and the last-resort 500.
    """

    def __init__(
        self,
        app: ASGIApp,
        pool_of: FastAPI,
        *,
        guard: Guard,
        max_body_bytes: int,
        read_timeout: float,
        affinity: bool,
        block: int,
        upstream_key: str | None = None,
        busy: BusyPoll | None = None,
    ) -> None:
        self.app = app
        self.busy = busy  # told when each proxied request begins and ends
        self.pool_of = pool_of
        self.guard = guard
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.affinity = affinity
        self.block = block
        self.upstream_auth = (
            [(b"authorization", f"Bearer {upstream_key}".encode())] if upstream_key else []
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not proxied(scope["method"], scope["path"]):
            if scope["type"] == "http":
                send = _with_headers(send, cors_origin(scope))
            await self.app(scope, receive, send)
            return
        busy = self.busy
        if busy is not None:
            busy.touch()
        request_id = request_id_of(scope)
        token = set_request_id(request_id)
        reply = _Reply(scope, send, request_id)
        try:
            await self._serve(scope, receive, reply)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not reply.started:
                await reply.error(RagError("internal error"), receive)
        finally:
            reset_request_id(token)
            if busy is not None:
                busy.touch()

    async def _serve(self, scope: Scope, receive: Receive, reply: _Reply) -> None:
        refusal = self.guard.refusal(scope)
        if refusal is not None:
            await reply.error(refusal, receive)
            return
        arrived = time.monotonic()
        try:
            body = await read_body(
                scope, receive, max_bytes=self.max_body_bytes, read_timeout=self.read_timeout
            )
        except RagError as exc:  # too large, too slow
            await reply.error(exc, receive)
            return
        path: str = scope["path"]
        prefix: tuple[str, ...] = ()
        budget = None
        if body and path in GENERATION_PATHS:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None  # llama-server answers it with its own 4xx
            budget = token_budget(parsed)
            if self.affinity:
                prefix = request_prefix(path, parsed, block=self.block)
        query = scope.get("query_string", b"")
        raw = scope.get("raw_path")
        sent_path = raw.decode("latin-1") if raw else path
        target = f"{sent_path}?{query.decode('latin-1')}" if query else sent_path
        headers = [(k, v) for k, v in scope["headers"] if k not in _NOT_PASSED_ON]
        headers += self.upstream_auth
        await self._forward(
            self.pool_of.state.pool, receive, reply, target, body, headers, prefix, budget, arrived
        )

    async def _forward(
        self,
        pool: Pool,
        receive: Receive,
        reply: _Reply,
        target: str,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        prefix: tuple[str, ...],
        budget: int | None,
        arrived: float,
    ) -> None:
        method = reply.scope["method"]
        trace = log.isEnabledFor(logging.DEBUG)  # per-request timings, for a diagnosis
        opened = first = ended = 0.0
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.Event()
        answered = False  # the last message is being sent: a disconnect now changes nothing
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            if not answered:
                task.cancel()

        def start_watching() -> None:
            nonlocal watcher
            watcher = asyncio.create_task(watch())

        timer = asyncio.get_running_loop().call_later(WATCH_AFTER, start_watching)
        try:
            async with pool.forward(
                method, target, content=body, headers=headers, prefix_key=prefix,
                budget=budget, tenant=reply.scope.get(TENANT),
            ) as upstream:  # fmt: skip
                if trace:
                    opened = time.monotonic()
                # names as the upstream wrote them: clients that read headers into a plain dict
                # (llama.cpp's own tests do) see the same keys as from llama-server
                headers_out = [
                    (k, v) for k, v in upstream.headers.raw if k.lower() not in _HOP_BY_HOP
                ]
                if upstream.headers.get("content-length") is not None and not _is_sse(upstream):
                    # a whole answer: one write for the headers, one for the body; raw bytes,
                    # as sent (aread would decode a compressed body under its encoding header)
                    content = b"".join([chunk async for chunk in raw_chunks(upstream)])
                    headers_out.append((b"content-length", str(len(content)).encode()))
                    answered = True
                    await reply.head(upstream.status_code, headers_out)
                    await reply.body(content)
                    return
                await reply.head(upstream.status_code, headers_out)
                async for chunk in raw_chunks(upstream):
                    if trace and not first:
                        first = time.monotonic()
                    await reply.body(chunk, more=True)
                if trace:
                    ended = time.monotonic()
                answered = True
                await reply.body(b"")
                if trace:
                    log.debug(
                        "timings %s %s: arrived %.6f, upstream answered +%.1f ms, first chunk "
                        "+%.1f ms, upstream ended +%.1f ms, done +%.1f ms", method,
                        target, arrived, *((t - arrived) * 1000 for t in (opened, first, ended,
                        time.monotonic())),
                    )  # fmt: skip
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            task.uncancel()
            log.info("client left %s %s; upstream request cancelled", method, target)
        except UpstreamRejected as exc:
            answered = True  # the upstream's status, headers and body, as it sent them
            headers_out = [(k, v) for k, v in exc.upstream_headers if k.lower() not in _HOP_BY_HOP]
            headers_out.append((b"content-length", str(len(exc.upstream_body)).encode()))
            await reply.head(exc.upstream_status, headers_out)
            await reply.body(exc.upstream_body)
        except RagError as exc:
            if reply.started:
                raise  # the answer is under way: the connection is cut, the client sees an error
            answered = True
            await reply.error(exc, receive)
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()


def document_proxied_paths(schema: dict[str, Any]) -> dict[str, Any]:
    """Add what ``ProxyApp`` answers to an OpenAPI ``schema`` (not FastAPI routes), so that
    ``/docs`` lists everything the balancer serves: llama-server's slot routes, and one entry
    for the rest."""
    for path in sorted(SLOT_PATHS):
        schema["paths"].setdefault(path, {})["post"] = {
            "tags": ["llama.cpp (proxied)"],
            "summary": f"Proxied to the upstream with the most free slots: POST {path}",
            "description": (
                "Passed through unchanged, streaming included; it holds a slot until the answer "
                "ends; failover to another upstream before the first byte. See llama.cpp's "
                "server documentation, the OpenAI and Anthropic APIs for the bodies."
            ),
            "responses": {
                "200": {"description": "The upstream's answer, unchanged"},
                "429": {"description": "Every slot busy and the buffer full"},
                "503": {"description": "No upstream can take it (`Retry-After` given)"},
            },
        }
    for method, path in OTHER_ROUTES:
        schema["paths"].setdefault(path, {})[method] = {
            "tags": ["llama.cpp (proxied)"],
            "summary": f"Proxied to a healthy upstream: {method.upper()} {path}",
            "description": "Passed through unchanged; takes no slot.",
            "responses": {"200": {"description": "The upstream's answer, unchanged"}},
        }
    schema["paths"]["/{path}"] = {
        method: {
            "tags": ["llama.cpp (proxied)"],
            "summary": f"Any other llama-server route: {method.upper()} to a healthy upstream",
            "description": (
                "Every path and method the balancer does not serve itself (tokenize, props, "
                "slots, token counting, LoRA adapters, CORS preflight, ...) goes unchanged to "
                "a healthy upstream."
            ),
            "parameters": [
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"200": {"description": "The upstream's answer, unchanged"}},
        }
        for method in ("get", "post", "delete", "options")
    }
    return schema


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` with ``extra`` headers added to the response head."""
    if not extra:
        return send

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


def _is_sse(response: httpx.Response | Answer) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")
