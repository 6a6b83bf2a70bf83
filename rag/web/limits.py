"""Limits on what a client may send, before a route sees it: body size and a slow body.

``BodyLimitMiddleware`` answers ``413 payload_too_large`` for a body whose ``Content-Length`` is
over the limit before reading a byte of it, and stops reading a body without one (chunked) as
soon as it passes the limit; a body whose next chunk does not arrive within ``read_timeout``
seconds is ``408 request_timeout``, and so is one that trickles in: past its first
``read_timeout`` seconds it must keep up an average of ``min_rate`` bytes a second (each byte
received buys ``1 / min_rate`` s; a byte every 29 s would otherwise hold a connection for ever
under a 30 s gap). While a route reads, both are raised as Starlette's
``HTTPException`` (FastAPI's body parsing passes that on, and turns anything else into a 400);
``rag/web/errors.py`` gives them the error shape. Routes that stream big bodies themselves
(uploads, with their own limit) are named in ``large`` with their own limit. The request head
is bounded in size and time by the HTTP server's protocol (``rag/web/server.py``).
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.core.errors import PayloadTooLarge, RagError, RequestTimeout
from rag.web.errors import error_response

DEFAULT_MIN_RATE = 1024.0
"""Bytes a second a request body must average once its first ``read_timeout`` has passed."""


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        read_timeout: float,
        min_rate: float = DEFAULT_MIN_RATE,
        large: dict[tuple[str, str], int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.min_rate = min_rate  # 0: no minimum
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
        loop = asyncio.get_running_loop()
        begun = loop.time()

        async def limited_receive() -> Message:
            nonlocal received, done
            if done:  # the body is read: what remains is waiting for a disconnect
                return await receive()
            wait = self.read_timeout
            if self.min_rate:
                earned = begun + self.read_timeout + received / self.min_rate - loop.time()
                wait = min(wait, earned)
            try:
                if wait <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError as exc:
                if wait < self.read_timeout:
                    detail = f"the request body arrived slower than {self.min_rate:g} bytes/s"
                else:
                    detail = f"no part of the request body arrived for {self.read_timeout} s"
                raise HTTPException(408, detail) from exc
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
