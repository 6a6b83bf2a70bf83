"""Limits on what a client may send, before a route sees it: body size and a slow body.

``BodyLimitMiddleware`` answers ``413 payload_too_large`` for a body whose ``Content-Length`` is
over the limit before reading a byte of it, and stops reading a body without one (chunked) as
soon as it passes the limit; a body whose next chunk does not arrive within ``read_timeout``
seconds is ``408 request_timeout``. While a route reads, both are raised as Starlette's
``HTTPException`` (FastAPI's body parsing passes that on, and turns anything else into a 400);
``rag/web/errors.py`` gives them the error shape. Routes that stream big bodies themselves
(uploads, with their own limit) are named in ``large`` with their own limit. Header size is the
HTTP server's (uvicorn's h11 ``h11_max_incomplete_event_size``, see :func:`server_options`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.core.errors import PayloadTooLarge, RagError, RequestTimeout
from rag.web.errors import error_response


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        read_timeout: float,
        large: dict[tuple[str, str], int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.large = large or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.large.get((scope["method"], scope["path"]), self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            error = PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of {limit} bytes"
            )
            await error_response(error)(scope, receive, send)
            return
        received = 0
        done = False

        async def limited_receive() -> Message:
            nonlocal received, done
            if done:  # the body is read: what remains is waiting for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError as exc:
                raise HTTPException(
                    408, f"no part of the request body arrived for {self.read_timeout} s"
                ) from exc
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
                done = not message.get("more_body", False)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:  # a plain ASGI app (the balancer's proxy) let it through
            if started or exc.status_code not in (408, 413):
                raise
            kind: type[RagError] = PayloadTooLarge if exc.status_code == 413 else RequestTimeout
            await error_response(kind(str(exc.detail)))(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def server_options(max_header_bytes: int, keep_alive: float = 5.0) -> dict[str, Any]:
    """uvicorn options that bound a request's headers: the h11 parser refuses (431/400) a head
    larger than ``max_header_bytes``; httptools has no such limit."""
    return {
        "http": "h11",
        "h11_max_incomplete_event_size": max_header_bytes,
        "timeout_keep_alive": keep_alive,
    }
