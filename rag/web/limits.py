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


class BodyPace:
    """How long the next part of one request body may take (the rules in the module's
    docstring), from the moment it was made."""

    def __init__(self, read_timeout: float, min_rate: float) -> None:
        self.read_timeout = read_timeout
        self.min_rate = min_rate  # 0: no minimum
        self._loop = asyncio.get_running_loop()
        self._begun = self._loop.time()

    def allowance(self, received: int) -> float:
        """Seconds the next part may take, ``received`` bytes in (0 or less: too slow already)."""
        wait = self.read_timeout
        if self.min_rate:
            earned = self._begun + self.read_timeout + received / self.min_rate - self._loop.time()
            wait = min(wait, earned)
        return wait

    def too_slow(self, wait: float) -> RequestTimeout:
        if wait < self.read_timeout:
            return RequestTimeout(f"the request body arrived slower than {self.min_rate:g} bytes/s")
        return RequestTimeout(f"no part of the request body arrived for {self.read_timeout} s")

    async def next(self, receive: Receive, received: int) -> Message:
        """The next message from ``receive``, or ``RequestTimeout``."""
        wait = self.allowance(received)
        try:
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):  # not wait_for: no task per receive on 3.11
                return await receive()
        except TimeoutError as exc:
            raise self.too_slow(wait) from exc


def over_limit(limit: int) -> PayloadTooLarge:
    """The error for a body found, while read, to be longer than ``limit`` bytes."""
    return PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")


def too_large(scope: Scope, limit: int) -> PayloadTooLarge | None:
    """The error for a request whose ``Content-Length`` is over ``limit``, if it is."""
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        return PayloadTooLarge(
            f"request body of {declared} bytes exceeds the limit of {limit} bytes"
        )
    return None


async def read_body(
    scope: Scope, receive: Receive, *, max_bytes: int, read_timeout: float,
    min_rate: float = DEFAULT_MIN_RATE,
) -> bytes:  # fmt: skip
    """The whole request body within the limits, or ``PayloadTooLarge`` / ``RequestTimeout``
    (for a plain ASGI app that reads the body itself: the balancer's proxy)."""
    error = too_large(scope, max_bytes)
    if error is not None:
        raise error
    pace = BodyPace(read_timeout, min_rate)
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await pace.next(receive, received)
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > max_bytes:
            raise over_limit(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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
        error = too_large(scope, limit)
        if error is not None:
            await error_response(error)(scope, receive, send)
            return
        received = 0
        done = False
        pace = BodyPace(self.read_timeout, self.min_rate)

        async def limited_receive() -> Message:
            nonlocal received, done
            if done:  # the body is read: what remains is waiting for a disconnect
                return await receive()
            try:
                message = await pace.next(receive, received)
            except RequestTimeout as exc:
                raise HTTPException(408, exc.message) from exc
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, over_limit(limit).message)
                done = not message.get("more_body", False)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:  # a plain ASGI app let it through
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
