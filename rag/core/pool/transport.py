"""The pools' upstream HTTP/1.1 client: asyncio protocols and llhttp under httpx's API.

Callers keep the one httpx API (``httpx.AsyncClient``, ``httpx.Response``, httpx's exceptions
and timeouts); a proxy may skip httpx's request and response objects (``exchange``: raw header
pairs out, an ``Answer`` back), with the same exceptions. Underneath, each upstream connection is
an :class:`asyncio.Protocol` (``connection.py``) whose answers llhttp parses (``httptools``, the
C parser uvicorn serves with: a dependency already, through ``uvicorn[standard]``). A request is
one write of its head and body; the answer's head resolves a future and its body goes, as it
arrives, to a buffer that the reader drains. aiohttp did this before (and httpcore before it):
its request path (URL and header objects, request and response classes, timers, trace hooks)
cost more per proxied request than the rest of the balancer's (``bench/pool/latency.py``), and a
pool of llama-servers needs none of it. ``TCP_NODELAY`` is set on every socket.

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
import functools
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import overload

import httpx

from rag.core.pool.connection import Connection, Origin

_BROKEN_BEFORE_ANSWER = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose request says its body's length even when it is empty."""


class _Body(httpx.AsyncByteStream):
    def __init__(self, connection: Connection, transport: UpstreamTransport, timeout: float | None):
        self._connection: Connection | None = connection
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


class RawHeaders:
    """An answer's header pairs as the upstream sent them (``raw``), with the one lookup of
    ``httpx.Headers`` that the pool makes (``get``)."""

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.raw:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return default


class Answer:
    """An upstream's answer on the raw path (``UpstreamTransport.exchange``): the status, the
    headers as sent and the body as a stream, with the members of ``httpx.Response`` that the
    pool uses (``status_code``, ``headers.get`` and ``.raw``, ``stream``, ``aread``,
    ``aclose``). ``chunked``: the body's length was not given."""

    __slots__ = ("chunked", "headers", "status_code", "stream")

    def __init__(self, connection: Connection, stream: httpx.AsyncByteStream) -> None:
        self.status_code = connection.status
        self.headers = RawHeaders(connection.headers)
        self.stream = stream
        self.chunked = connection.chunked

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.stream])

    async def aclose(self) -> None:
        await self.stream.aclose()


class UpstreamTransport(httpx.AsyncBaseTransport):
    """Kept-alive connections per upstream (the most recently used first), at most
    ``max_connections`` open in all; an idle one is closed after ``keepalive_expiry`` s."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[Origin, list[Connection]] = {}
        self._open: set[Connection] = set()
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
        read = timeouts.get("read")
        connection = await self._exchange(
            _origin(request.url), _request_head(request) + body, timeouts,
            head_only=request.method == "HEAD", request=request,
        )  # fmt: skip
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=_Body(connection, self, read),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def exchange(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        timeouts: Mapping[str, float | None],
    ) -> Answer:
        """Send a request made of raw parts, ``headers`` as given (plus ``Host`` and the body's
        length): the proxy's path, with none of httpx's request and response objects."""
        origin, target, host = _target(url)
        head = [b"%b %b HTTP/1.1\r\nhost: %b" % (method.encode(), target, host)]
        head.extend(b"%b: %b" % pair for pair in headers)
        if body or method in _BODY_METHODS:
            head.append(b"content-length: %d" % len(body))
        head.append(b"\r\n")
        connection = await self._exchange(
            origin, b"\r\n".join(head) + body, timeouts, head_only=method == "HEAD", request=None
        )
        return Answer(connection, _Body(connection, self, timeouts.get("read")))

    async def _exchange(
        self,
        origin: Origin,
        data: bytes,
        timeouts: Mapping[str, float | None],
        *,
        head_only: bool,
        request: httpx.Request | None,
    ) -> Connection:
        """Send ``data`` (a request's head and body) to ``origin``; the connection once the
        answer's head has come."""
        read = timeouts.get("read")
        connection, reused = await self._acquire(origin, timeouts, request)
        try:
            await connection.send(data, read, head_only=head_only, request=request)
        except _BROKEN_BEFORE_ANSWER:
            connection.close()
            if not reused:
                raise
            # a kept-alive connection the server had closed (idle, or after an answer): the
            # request was never handled; once more on a connection opened for it
            self.resent += 1
            connection = await self._connect(origin, timeouts, request)
            try:
                await connection.send(data, read, head_only=head_only, request=request)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            connection.close()
            raise
        return connection

    async def _acquire(
        self, origin: Origin, timeouts: Mapping[str, float | None], request: httpx.Request | None
    ) -> tuple[Connection, bool]:
        idle = self._idle.get(origin)
        if idle:
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if not connection.lost and now - connection.idle_since < self._keepalive_expiry:
                    return connection, True
                connection.close()
        return await self._connect(origin, timeouts, request), False

    async def _connect(
        self, origin: Origin, timeouts: Mapping[str, float | None], request: httpx.Request | None
    ) -> Connection:
        await self._make_room(timeouts.get("pool"), request)
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
                    lambda: Connection(self._forget, origin), host, port, ssl=tls
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

    async def _make_room(self, wait: float | None, request: httpx.Request | None) -> None:
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
        oldest: Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is None:
            return False
        oldest.close()
        return True

    def _release(self, connection: Connection) -> None:
        if connection.reusable():
            connection._begin(False, None, head_only=False)
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.origin, []).append(connection)
        else:
            connection.close()

    def _forget(self, connection: Connection) -> None:
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


def _origin(url: httpx.URL) -> Origin:
    scheme = url.scheme
    return scheme, url.host, url.port or (443 if scheme == "https" else 80)


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> tuple[Origin, bytes, bytes]:
    """``url``'s origin, its path and query as sent, and its ``Host`` header, parsed once: a
    pool sends to a few upstreams' few paths."""
    parsed = httpx.URL(url)
    host = parsed.netloc  # host[:port] as written, IPv6 in brackets
    return _origin(parsed), parsed.raw_path, host


def _request_head(request: httpx.Request) -> bytes:
    lines = [b"%b %b HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
    lines.extend(b"%b: %b" % (name, value) for name, value in request.headers.raw)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)
