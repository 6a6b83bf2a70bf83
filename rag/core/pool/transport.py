"""An httpx transport that sends requests with aiohttp: the pools' upstream I/O.

Callers keep the one httpx API (``httpx.AsyncClient``, ``httpx.Response``, httpx's exceptions
and timeouts); only the connection pool and the HTTP/1.1 parser underneath are aiohttp's, whose
C parser and leaner connection handling cost about a millisecond less per proxied request than
httpcore (``bench/pool/latency.py``: balancer added p50 +2.75 ms → +1.5 ms on the slot path).
aiohttp sets ``TCP_NODELAY`` on its sockets itself.

aiohttp's exceptions are mapped to the httpx ones the pool acts on: connect failures (fail over
and quarantine), a server that closes the connection or breaks the stream (fail over before the
first byte, an error after), timeouts. A response closed before its end closes its connection, so
llama-server notices and stops generating.

Connections after a streamed answer: llama-server (11434) ends every chunked answer by closing
the connection (its stream provider returns false after the last chunk, which cpp-httplib takes
as an error), although its headers promise ``Keep-Alive``. A client that puts such a connection
back in its pool sends its next request into a closed socket: measured on one connection, every
second streamed request failed ("Can not write request body", "Server disconnected"). So a
chunked answer's connection is closed here, never reused. A request whose connection still
breaks before any answer (a server closing an idle one) is sent once more on a connection opened
for it, never on another pooled one that may be just as stale.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def _mapped(request: httpx.Request) -> Iterator[None]:
    """aiohttp's exceptions as httpx's, most specific first."""
    try:
        yield
    except aiohttp.ClientConnectorError as exc:  # refused, unreachable, name not resolved
        raise httpx.ConnectError(_message(exc), request=request) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(_message(exc), request=request) from exc
    except aiohttp.ServerTimeoutError as exc:  # silence longer than the read timeout
        raise httpx.ReadTimeout(_message(exc), request=request) from exc
    except aiohttp.ClientPayloadError as exc:  # the body broke off
        raise httpx.ReadError(_message(exc), request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:  # closed without (a whole) answer
        raise httpx.RemoteProtocolError(_message(exc), request=request) from exc
    except aiohttp.ClientConnectionError as exc:  # reset, broken pipe
        raise httpx.ReadError(_message(exc), request=request) from exc
    except aiohttp.ClientError as exc:  # an answer that is not HTTP
        raise httpx.RemoteProtocolError(_message(exc), request=request) from exc
    except TimeoutError as exc:
        raise httpx.ReadTimeout(_message(exc), request=request) from exc


_BROKEN_BEFORE_ANSWER = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # back to the pool when read to the end; otherwise the connection is closed
        self._response.release()


class _Response(aiohttp.ClientResponse):
    """aiohttp's response, except that a chunked answer's connection is never pooled."""

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        protocol = connection.protocol
        started = await super().start(connection)
        if protocol is not None and "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            if self.connection is None:  # the whole answer came with its head: pooled already
                protocol.close()  # (no task ran since: none took it; the pool drops it)
            else:
                protocol.force_close()  # closed instead of pooled when the answer ends
        return started


@functools.lru_cache(maxsize=64)
def _aiohttp_timeout(
    pool: float | None, connect: float | None, read: float | None
) -> aiohttp.ClientTimeout:
    """httpx's timeouts as aiohttp's, made once per distinct set."""
    return aiohttp.ClientTimeout(total=None, connect=pool, sock_connect=connect, sock_read=read)


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int, keepalive_expiry: float) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # a new connection per request
        self.resent = 0  # requests sent again after their connection broke before an answer

    def _client(self, *, fresh: bool = False) -> aiohttp.ClientSession:
        # made on first use: an aiohttp session belongs to the running event loop
        session = self._fresh if fresh else self._session
        if session is None:
            connector = (
                aiohttp.TCPConnector(limit=self._max_connections, force_close=True)
                if fresh
                else aiohttp.TCPConnector(
                    limit=self._max_connections, keepalive_timeout=self._keepalive_expiry
                )
            )
            # no cookie jar: a proxy must not keep one upstream answer's cookies for the next
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(), response_class=_Response,
            )  # fmt: skip
            if fresh:
                self._fresh = session
            else:
                self._session = session
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            data: bytes | httpx.AsyncByteStream | None = request.content or None
        except httpx.RequestNotRead:
            assert isinstance(request.stream, httpx.AsyncByteStream)
            data = request.stream
        try:
            response = await self._send(request, data)
        except _BROKEN_BEFORE_ANSWER:
            # a kept-alive connection the server had closed (idle, or after an answer): the
            # request was never handled. Send it once more on a connection opened for it (a
            # pooled one may be just as stale), unless its body was a stream that cannot be
            # replayed.
            if isinstance(data, httpx.AsyncByteStream):
                raise
            self.resent += 1
            response = await self._send(request, data, fresh=True)
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
            },
        )

    async def _send(
        self,
        request: httpx.Request,
        data: bytes | httpx.AsyncByteStream | None,
        *,
        fresh: bool = False,
    ) -> aiohttp.ClientResponse:
        timeout = request.extensions.get("timeout", {})
        with _mapped(request):
            return await self._client(fresh=fresh).request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=data,
                allow_redirects=False,
                compress=False,
                timeout=_aiohttp_timeout(
                    timeout.get("pool"), timeout.get("connect"), timeout.get("read")
                ),
            )

    async def aclose(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()
        self._session = self._fresh = None
