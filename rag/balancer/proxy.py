"""The proxying part of the balancer as a plain ASGI app: the hot path, kept lean.

``ProxyApp`` answers the llama-server / OpenAI endpoints itself (every other request goes on to
the FastAPI app): it reads the body, derives the prefix-affinity keys and the token budget (for
the pool's early handoff), opens the answer through ``Pool.stream`` (which fails over before the
first byte) and passes it on byte for byte. One watcher task per request listens for the client's
disconnect and cancels the request at once, whether it is waiting for a slot, waiting for the
upstream or streaming: ``Pool.stream`` then closes the upstream response, which makes
llama-server stop and free the slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from rag.core.errors import RagError
from rag.core.pool import Pool, UpstreamRejected
from rag.core.pool.budget import token_budget
from rag.core.pool.observe import raw_chunks
from rag.core.pool.prefix import request_prefix
from rag.web.errors import error_response

log = logging.getLogger(__name__)

GENERATION_PATHS = frozenset(
    {"/completion", "/completions", "/v1/completions", "/chat/completions", "/v1/chat/completions"}
)
OTHER_POST_PATHS = frozenset(
    {"/v1/embeddings", "/embeddings", "/embedding", "/tokenize", "/detokenize", "/infill",
     "/apply-template"}
)  # fmt: skip
GET_PATHS = frozenset({"/v1/models", "/models", "/props"})
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
     b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length"}
)  # fmt: skip


def proxied(method: str, path: str) -> bool:
    if method == "POST":
        return path in GENERATION_PATHS or path in OTHER_POST_PATHS
    return method == "GET" and path in GET_PATHS


class ProxyApp:
    """Serves the proxied endpoints from ``app.state.pool``; passes the rest to ``app``."""

    def __init__(self, app: FastAPI, *, affinity: bool, block: int) -> None:
        self.app = app
        self.affinity = affinity
        self.block = block

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not proxied(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        pool: Pool = self.app.state.pool
        body = await _read_body(receive)
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
        target = f"{path}?{query.decode('latin-1')}" if query else path
        headers = httpx.Headers([(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP])
        await self._forward(pool, scope, receive, send, target, body, headers, prefix, budget)

    async def _forward(
        self,
        pool: Pool,
        scope: Scope,
        receive: Receive,
        send: Send,
        target: str,
        body: bytes,
        headers: httpx.Headers,
        prefix: tuple[str, ...],
        budget: int | None,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.Event()
        answered = False  # the last message is being sent: a disconnect now changes nothing

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            if not answered:
                task.cancel()

        watcher = asyncio.create_task(watch())
        started = False
        try:
            async with pool.stream(
                scope["method"], target, content=body or None, headers=headers,
                prefix_key=prefix, budget=budget,
            ) as upstream:  # fmt: skip
                headers_out = [
                    (k.lower(), v) for k, v in upstream.headers.raw if k.lower() not in _HOP_BY_HOP
                ]
                start = {"type": "http.response.start", "status": upstream.status_code}
                if "content-length" in upstream.headers and not _is_sse(upstream):
                    # a whole answer: one write for the headers, one for the body; raw bytes,
                    # as sent (aread would decode a compressed body under its encoding header)
                    content = b"".join([chunk async for chunk in raw_chunks(upstream)])
                    headers_out.append((b"content-length", str(len(content)).encode()))
                    started = answered = True
                    await send({**start, "headers": headers_out})
                    await send({"type": "http.response.body", "body": content})
                    return
                await send({**start, "headers": headers_out})
                started = True
                async for chunk in raw_chunks(upstream):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                answered = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            task.uncancel()
            log.info("client left %s %s; upstream request cancelled", scope["method"], target)
        except UpstreamRejected as exc:
            answered = True
            response = Response(exc.upstream_body, exc.upstream_status, media_type=exc.content_type)
            await response(scope, receive, send)
        except RagError as exc:
            if started:
                raise  # the answer is under way: the connection is cut, the client sees an error
            answered = True
            await error_response(exc)(scope, receive, send)
        finally:
            watcher.cancel()


def document_proxied_paths(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the endpoints ``ProxyApp`` answers to an OpenAPI ``schema`` (they are not FastAPI
    routes), so that ``/docs`` lists everything the balancer serves."""
    described = {
        "post": sorted(GENERATION_PATHS | OTHER_POST_PATHS),
        "get": sorted(GET_PATHS),
    }
    for method, paths in described.items():
        for path in paths:
            generation = path in GENERATION_PATHS
            schema["paths"].setdefault(path, {})[method] = {
                "tags": ["llama.cpp (proxied)"],
                "summary": f"Proxied to an upstream llama-server: {method.upper()} {path}",
                "description": (
                    "Passed through unchanged, streaming included, to the upstream chosen by "
                    "the pool's policy"
                    + (" (it holds a slot until the answer ends)" if generation else "")
                    + "; failover to another upstream before the first byte. See llama.cpp's "
                    "server documentation and the OpenAI API for the bodies."
                ),
                "responses": {
                    "200": {"description": "The upstream's answer, unchanged"},
                    "429": {"description": "Every slot busy and the buffer full"},
                    "503": {"description": "No upstream can take it (`Retry-After` given)"},
                },
            }
    return schema


def _is_sse(response: httpx.Response) -> bool:
    return str(response.headers.get("content-type", "")).startswith("text/event-stream")


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
