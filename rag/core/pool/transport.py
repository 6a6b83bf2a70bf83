"""An httpx transport that sends requests with aiohttp: the pools' upstream I/O.

Callers keep the one httpx API (``httpx.AsyncClient``, ``httpx.Response``, httpx's exceptions
and timeouts); only the connection pool and the HTTP/1.1 parser underneath are aiohttp's, whose
C parser and leaner connection handling cost about a millisecond less per proxied request than
httpcore (``bench/pool/latency.py``: balancer added p50 +2.75 ms → +1.5 ms on the slot path).
aiohttp sets ``TCP_NODELAY`` on its sockets itself.

aiohttp's exceptions are mapped to the httpx ones the pool acts on: connect failures (fail over
and quarantine), a server that closes the connection or breaks the stream (fail over before the
first byte, an error after), timeouts. A request whose connection breaks before any answer is
sent once more on a new connection first (llama-server drops kept-alive connections after
streamed answers now and then). A response closed before its end closes its connection, so
llama-server notices and stops generating.
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

    def _client(self) -> aiohttp.ClientSession:
        # made on first use: an aiohttp session belongs to the running event loop
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=self._keepalive_expiry
            )
            # no cookie jar: a proxy must not keep one upstream answer's cookies for the next
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )  # fmt: skip
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            data: bytes | httpx.AsyncByteStream | None = request.content or None
        except httpx.RequestNotRead:
            assert isinstance(request.stream, httpx.AsyncByteStream)
            data = request.stream
        try:
            response = await self._send(request, data)
        except _BROKEN_BEFORE_ANSWER:
            # llama-server now and then closes a kept-alive connection after a streamed answer
            # while the client is already reusing it (seen after 5 to 50 streamed requests on
            # one connection: a hang-up or a reset). The request was never handled: send it once
            # more, on a new connection, unless its body was a stream that cannot be replayed.
            if isinstance(data, httpx.AsyncByteStream):
                raise
            response = await self._send(request, data)
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
        self, request: httpx.Request, data: bytes | httpx.AsyncByteStream | None
    ) -> aiohttp.ClientResponse:
        timeout = request.extensions.get("timeout", {})
        with _mapped(request):
            return await self._client().request(
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
        if self._session is not None:
            await self._session.close()
            self._session = None
