"""One connection to an upstream: an asyncio protocol whose answers llhttp parses.

``UpstreamTransport`` (``transport.py``) pools them and says why (the module's docstring): one
request at a time is written in one go; the answer's head resolves a future, its body goes to a
buffer as it arrives (reading pauses above ``_HIGH_WATER`` bytes), and every failure is the
httpx exception the pool acts on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Callable
from typing import cast

import httptools
import httpx

_HIGH_WATER = 1 << 20
"""Bytes of one answer buffered before its socket stops being read (resumed below a quarter)."""
Origin = tuple[str, str, int]
"""(scheme, host, port) of an upstream: connections are pooled per origin."""


class Connection(asyncio.Protocol):
    """One connection to an upstream: one request at a time, its answer parsed as it arrives."""

    def __init__(self, forget: Callable[[Connection], None], origin: Origin) -> None:
        self._forget = forget  # told when the connection closes
        self.origin = origin
        self._loop = asyncio.get_running_loop()
        self._socket: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.idle_since = 0.0
        self._asked = False
        self._request: httpx.Request | None = None
        self._begin(False, None, head_only=False)

    def _begin(self, asked: bool, request: httpx.Request | None, *, head_only: bool) -> None:
        self._asked = asked  # a request is out: an answer is expected
        self._request = request  # httpx's, for its exceptions; None on the raw path
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
        if not self._asked:  # nothing asked: a server talking out of turn
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
        self._forget(self)
        if not self._asked or self.complete:
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
            self._fail(httpx.ReadTimeout("no data from the upstream within the read timeout",
                                         request=self._request))  # fmt: skip

    async def send(
        self, data: bytes, read: float | None, *, head_only: bool, request: httpx.Request | None
    ) -> None:
        """Write ``data`` (the request's head and body) and wait for the answer's head."""
        assert self._socket is not None
        self._begin(True, request, head_only=head_only)
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
        self._forget(self)
