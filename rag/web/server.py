"""uvicorn as both apps run it: request heads bounded in size and in time.

uvicorn's HTTP parsers keep reading a request head for as long as it lasts: httptools (llhttp)
has no size limit at all (a 64 MiB header was answered 200, the process peaking at 440 MiB while
it concatenated the value), h11 has ``h11_max_incomplete_event_size`` but answers a plain 400;
and neither has a deadline for the head (``timeout_keep_alive`` only runs between requests, so a
client that sends one byte every few seconds, or opens a connection and sends nothing, keeps it
for ever). The protocols here wrap uvicorn's two: they count the bytes of the head as they
arrive and answer ``431 header_too_large`` once it passes ``max_head_bytes`` (before the parser
sees the excess), and ``408 request_timeout`` when a head is not complete ``head_timeout``
seconds after its first byte (or after the connection opened). Both answers have the error
shape, close the connection, and read and drop what the client still sends for a moment
(``LINGER``) so that a client busy writing its huge head still reads the answer.

Bodies are bounded by ``rag.web.limits.BodyLimitMiddleware`` (size, a body that stops arriving).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import logging
from collections.abc import Callable
from typing import Any, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from rag.core.errors import HeaderTooLarge, RagError, RequestTimeout
from rag.web.requestid import new_request_id

log = logging.getLogger(__name__)

DEFAULT_MAX_HEAD_BYTES = 64 * 1024
DEFAULT_HEAD_TIMEOUT = 10.0
LINGER = 2.0
"""Seconds a refused connection keeps reading (and dropping) before it closes."""

Http = Literal["auto", "httptools", "h11"]


class HeadGuard:
    """The bytes and the time one connection's current request head has taken.

    ``waiting()`` tells whether the connection is reading a request head (the parser's state),
    ``busy()`` whether a response is under way on it (then nothing may be written)."""

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        max_bytes: int,
        timeout: float,
        waiting: Callable[[], bool],
        busy: Callable[[], bool],
    ) -> None:
        self.transport = transport
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.waiting = waiting
        self.busy = busy
        self.received = 0  # bytes of the current head so far
        self.refused = False
        self._loop = asyncio.get_running_loop()
        # a connection that never sends a byte is closed too
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(timeout, self._expired)

    def receive(self, data: bytes, feed: Callable[[bytes], None]) -> None:
        """Pass ``data`` to the parser (``feed``) as long as the head stays within bounds."""
        if self.refused:
            return  # lingering: dropped
        if not self.waiting():
            feed(data)
            return
        if self._timer is None:  # the first bytes of a head after a keep-alive pause
            self._timer = self._loop.call_later(self.timeout, self._expired)
        room = self.max_bytes - self.received
        if len(data) > room:
            if room > 0:
                feed(data[:room])  # the head may end within it
            if self.transport.is_closing():
                return
            if self.waiting():
                self.refuse(HeaderTooLarge(f"request head over {self.max_bytes} bytes"))
                return
            self.head_complete()
            feed(data[room:])
            return
        self.received += len(data)
        feed(data)
        if not self.waiting():
            self.head_complete()

    def head_complete(self) -> None:
        """The current head has ended: the next one starts from nothing. A parser that can end
        a head and its whole message within one ``feed`` (llhttp) says so from its callback."""
        self.received = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.refused or not self.waiting():
            return
        if self.busy():  # a pipelined head while an answer streams: look again later
            self._timer = self._loop.call_later(self.timeout, self._expired)
            return
        if self.received == 0:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        self.refuse(RequestTimeout(f"the request head did not arrive within {self.timeout} s"))

    def refuse(self, error: RagError) -> None:
        """Answer ``error`` (unless a response is under way) and close the connection after
        dropping what the client still sends for ``LINGER`` seconds."""
        self.refused = True
        self.head_complete()
        client = self.transport.get_extra_info("peername")
        log.info("request head refused (%s, %s): %s", error.status, client, error.message)
        if self.busy():
            self.transport.close()
            return
        self.transport.write(_raw_answer(error))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._loop.call_later(LINGER, self.transport.close)
        else:
            self.transport.close()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _raw_answer(error: RagError) -> bytes:
    """An HTTP/1.1 answer with the error shape, written before any request object exists."""
    request_id = new_request_id()
    body = error.body()
    body["error"]["request_id"] = request_id
    content = json.dumps(body).encode()
    reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}.get(error.status)
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (error.status, reason or b""),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(content),
            b"x-request-id: %s\r\n" % request_id.encode(),
            b"connection: close\r\n\r\n",
            content,
        ]
    )


class _BoundedHead(asyncio.Protocol):
    """What both bounded protocols add to uvicorn's (first in their bases, so ``super()`` is
    uvicorn's protocol): a :class:`HeadGuard` per connection. ``_head_waiting`` says, from the
    parser's state, whether a request head is being read."""

    max_head_bytes = DEFAULT_MAX_HEAD_BYTES
    head_timeout = DEFAULT_HEAD_TIMEOUT
    _guard: HeadGuard | None = None
    cycle: Any  # uvicorn's request-response cycle of the connection (None between requests)

    def _head_waiting(self) -> bool:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._guard = HeadGuard(
            transport,
            max_bytes=self.max_head_bytes,
            timeout=self.head_timeout,
            waiting=self._head_waiting,
            busy=self._busy,
        )

    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self._guard is None:
            super().data_received(data)
        else:
            self._guard.receive(data, super().data_received)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._guard is not None:
            self._guard.stop()
        super().connection_lost(exc)


class BoundedH11Protocol(_BoundedHead, H11Protocol):
    """uvicorn's h11 protocol with the head bounded (``bounded_protocol`` sets the limits)."""

    def _head_waiting(self) -> bool:
        return self.conn.their_state is h11.IDLE


class _HeadWithBody:
    """A connection's transport as one response sees it: the response head is held until the
    body's first write, so that a whole answer goes out as one write (one packet, one wake-up
    of the client instead of two), or until the end of the event loop's turn."""

    __slots__ = ("_first", "_held", "_transport")
    _COPY_BELOW = 64 * 1024  # a small body is joined to its head; a big one goes beside it

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._first:
            self._first = False
            self._held = data
            asyncio.get_running_loop().call_soon(self.flush)
            return
        held, self._held = self._held, None
        if held is None:
            self._transport.write(data)
        elif len(data) < self._COPY_BELOW:
            self._transport.write(held + data)
        else:
            self._transport.writelines([held, data])

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@functools.cache
def _httptools_protocol() -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the head bounded, imported only when chosen
    (httptools is optional: h11 is pure Python)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(_BoundedHead, HttpToolsProtocol):
        """A head is open from the connection's start, or the end of the previous message,
        until llhttp has parsed its last header."""

        _head_open = True

        def _head_waiting(self) -> bool:
            return self._head_open

        def on_headers_complete(self) -> None:
            self._head_open = False
            if self._guard is not None:  # not counted against the next request's head
                self._guard.head_complete()
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not None and self.cycle is not before:  # (none made: an upgrade)
                self.cycle.transport = _HeadWithBody(self.transport)

        def on_message_complete(self) -> None:
            self._head_open = True
            super().on_message_complete()

    return BoundedHttpToolsProtocol


def bounded_protocol(
    http: Http, max_head_bytes: int, head_timeout: float
) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's ``http`` option: ``http``'s parser (``auto``:
    httptools where it is installed, as uvicorn chooses) with these bounds on the head."""
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    base = _httptools_protocol() if http == "httptools" else BoundedH11Protocol
    return type(
        base.__name__,
        (base,),
        {"max_head_bytes": max_head_bytes, "head_timeout": head_timeout},
    )


def server_options(
    max_header_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    header_timeout: float = DEFAULT_HEAD_TIMEOUT,
    *,
    http: Http = "h11",
    keep_alive: float = 5.0,
) -> dict[str, Any]:
    """uvicorn options (``uvicorn.run(app, **server_options(...))``) that bound request heads:
    over ``max_header_bytes`` a 431, not complete within ``header_timeout`` seconds a 408."""
    return {
        "http": bounded_protocol(http, max_header_bytes, header_timeout),
        # h11's own buffer limit stays above ours (it would answer a bare 400 first)
        "h11_max_incomplete_event_size": max_header_bytes + 1,
        "timeout_keep_alive": keep_alive,
    }
