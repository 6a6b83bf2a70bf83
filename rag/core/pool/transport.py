"""The pools' upstream HTTP/1.1 client: asyncio protocols and llhttp under httpx's API.

Callers keep the one httpx API (``httpx.AsyncClient``, ``httpx.Response``, httpx's exceptions
and timeouts); underneath, each upstream connection is an :class:`asyncio.Protocol` whose answers
llhttp parses (``httptools``, the C parser uvicorn serves with: a dependency already, through
``uvicorn[standard]``). A request is one write of its head and body; the answer's head resolves
a future and its body goes, as it arrives, to a buffer that the reader drains. aiohttp did this
before (and httpcore before it): its request path (URL and header objects, request and response
classes, timers, trace hooks) cost more per proxied request than the rest of the balancer's
(``bench/pool/latency.py``), and a pool of llama-servers needs none of it. ``TCP_NODELAY`` is set
on every socket.

Failures are httpx's exceptions, which the pool acts on: a refused or unreachable upstream is a
``ConnectError`` (fail over and quarantine); a connection closed without an answer a
``RemoteProtocolError`` and one reset a ``ReadError`` (fail over before the first byte, an error
after); silence longer than the read timeout a ``ReadTimeout``. A response closed before its end
closes its connection, so llama-server notices and stops generating.

Connections after a streamed answer: llama-server (11434) ends every chunked answer by closing
the connection (its stream provider returns false after the last chunk, which cpp-httplib takes
as an error), although its headers promise ``Keep-Alive``. A client that puts such a connection
back in its pool sends its next request into a closed socket: measured on one connection, every
second streamed request failed. So a chunked answer's connection is closed here, never reused.
A request sent on a kept-alive connection that breaks before any answer (a server closing an
idle one) is sent once more on a connection opened for it, never on another pooled one that may
be just as stale.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import cast

import httptools
import httpx

_HIGH_WATER = 1 << 20
"""Bytes of one answer buffered before its socket stops being read (resumed below a quarter)."""
_BROKEN_BEFORE_ANSWER = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class _Connection(asyncio.Protocol):
    """One connection to an upstream: one request at a time, its answer parsed as it arrives."""

    def __init__(self, transport: UpstreamTransport, origin: tuple[str, str, int]) -> None:
        self._owner = transport
        self.origin = origin
        self._loop = asyncio.get_running_loop()
        self._socket: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.idle_since = 0.0
        self._request: httpx.Request | None = None
        self._begin(None, head_only=False)

    def _begin(self, request: httpx.Request | None, *, head_only: bool) -> None:
        self._request = request
        self._head_only = head_only  # HEAD: the answer has no body, whatever its length says
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._interim = False  # a 1xx head: the real answer follows
        self._delimited = False  # a length or chunked encoding says where the body ends
        self.chunked = False
        self.keep_alive = False
        self.head: asyncio.Future[None] | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self.complete = False
        self.error: httpx.TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._socket = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not TCP
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._request is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(
                httpx.RemoteProtocolError("the upstream switched protocols", request=self._request)
            )
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer: {exc}", request=self._request))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._owner._forget(self)
        if self._request is None or self.complete:
            return
        if self.head is not None and self.head.done() and not self._delimited and exc is None:
            self.complete = True  # a body that ends with the connection (no length given)
            self._wake()
            return
        if exc is not None:
            self._fail(httpx.ReadError(f"connection broken: {exc}", request=self._request))
        elif self.head is None or not self.head.done():
            self._fail(httpx.RemoteProtocolError("Server disconnected", request=self._request))
        else:
            self._fail(httpx.ReadError("the answer broke off", request=self._request))

    # --- llhttp callbacks ------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True
            self.headers = []
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive() and not self._head_only
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                self._delimited = True
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                self._delimited = self.chunked = True
        if self._head_only or status in (204, 304):
            self._delimited = True
        if self.head is not None and not self.head.done():
            self.head.set_result(None)
        if self._head_only:
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self._head_only:
            return
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._socket is not None:
            self._paused = True
            self._socket.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._wake()

    # --- used by the transport and the body ------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        self._wake()
        self.close()

    async def _wait(self, future: asyncio.Future[None], seconds: float | None) -> None:
        if seconds is None:
            await future
            return
        timer = self._loop.call_later(seconds, self._expire, future)
        try:
            await future
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[None]) -> None:
        if not future.done():
            assert self._request is not None
            self._fail(httpx.ReadTimeout("no data from the upstream within the read timeout",
                                         request=self._request))  # fmt: skip

    async def send(self, request: httpx.Request, data: bytes, read: float | None) -> None:
        """Write ``data`` (the request's head and body) and wait for the answer's head."""
        assert self._socket is not None
        self._begin(request, head_only=request.method == "HEAD")
        self.head = self._loop.create_future()
        if self.lost or self._socket.is_closing():
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        self._socket.write(data)
        await self._wait(self.head, read)

    async def next_chunk(self, read: float | None) -> bytes | None:
        """What has arrived of the body, waiting for it; ``None`` at its end."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
                self.chunks.clear()
                self._buffered = 0
                if self._paused and self._socket is not None:
                    self._paused = False
                    self._socket.resume_reading()
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            self._waiter = self._loop.create_future()
            try:
                await self._wait(self._waiter, read)
            finally:
                self._waiter = None

    def reusable(self) -> bool:
        # chunked: llama-server closes the connection after the last chunk (module docstring)
        return (
            self.complete and self.keep_alive and not self.chunked and not self.lost
            and self.error is None
        )  # fmt: skip

    def close(self) -> None:
        self.lost = True
        if self._socket is not None and not self._socket.is_closing():
            self._socket.close()
        self._owner._forget(self)


class _Body(httpx.AsyncByteStream):
    def __init__(
        self, connection: _Connection, transport: UpstreamTransport, timeout: float | None
    ):
        self._connection: _Connection | None = connection
        self._transport = transport
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        while True:
            chunk = await connection.next_chunk(self._timeout)
            if chunk is None:
                break
            yield chunk
        await self.aclose()

    async def aclose(self) -> None:
        # back to the pool when read to the end; otherwise the connection is closed
        connection, self._connection = self._connection, None
        if connection is not None:
            self._transport._release(connection)


class UpstreamTransport(httpx.AsyncBaseTransport):
    """Kept-alive connections per upstream (the most recently used first), at most
    ``max_connections`` open in all; an idle one is closed after ``keepalive_expiry`` s."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._connecting = 0  # connections being opened: they count against the limit too
        self._room: collections.deque[asyncio.Future[None]] = collections.deque()
        self._tls: ssl.SSLContext | None = None
        self.resent = 0  # requests sent again after a kept-alive connection broke before an answer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        try:
            body = request.content
        except httpx.RequestNotRead:  # a streamed body: read here, so it can be sent again
            body = await request.aread()
        data = _request_head(request) + body
        read = timeouts.get("read")
        connection, reused = await self._acquire(request, timeouts)
        try:
            await connection.send(request, data, read)
        except _BROKEN_BEFORE_ANSWER:
            connection.close()
            if not reused:
                raise
            # a kept-alive connection the server had closed (idle, or after an answer): the
            # request was never handled; once more on a connection opened for it
            self.resent += 1
            connection = await self._connect(request, timeouts)
            try:
                await connection.send(request, data, read)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            connection.close()
            raise
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=_Body(connection, self, read),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _acquire(
        self, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> tuple[_Connection, bool]:
        idle = self._idle.get(_origin(request.url))
        if idle:
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if not connection.lost and now - connection.idle_since < self._keepalive_expiry:
                    return connection, True
                connection.close()
        return await self._connect(request, timeouts), False

    async def _connect(
        self, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> _Connection:
        await self._make_room(request, timeouts.get("pool"))
        origin = _origin(request.url)
        scheme, host, port = origin
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        loop = asyncio.get_running_loop()
        self._connecting += 1
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, origin), host, port, ssl=tls
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} timed out", request=request
            ) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        finally:
            self._connecting -= 1
            self._wake_one()
        self._open.add(connection)
        return connection

    async def _make_room(self, request: httpx.Request, wait: float | None) -> None:
        while len(self._open) + self._connecting >= self._max_connections:
            if self._close_oldest_idle():
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._room.append(waiter)
            try:
                async with asyncio.timeout(wait):
                    await waiter
            except TimeoutError as exc:
                raise httpx.PoolTimeout(
                    "every upstream connection is in use", request=request
                ) from exc
            finally:
                if waiter in self._room:
                    self._room.remove(waiter)

    def _close_oldest_idle(self) -> bool:
        oldest: _Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is None:
            return False
        oldest.close()
        return True

    def _release(self, connection: _Connection) -> None:
        if connection.reusable():
            connection._begin(None, head_only=False)
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.origin, []).append(connection)
        else:
            connection.close()

    def _forget(self, connection: _Connection) -> None:
        """``connection`` is closed: out of the idle lists and the count."""
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
        if connection in self._open:
            self._open.discard(connection)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._room:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._idle.clear()


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    scheme = url.scheme
    return scheme, url.host, url.port or (443 if scheme == "https" else 80)


def _request_head(request: httpx.Request) -> bytes:
    lines = [b"%b %b HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
    lines.extend(b"%b: %b" % (name, value) for name, value in request.headers.raw)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)
