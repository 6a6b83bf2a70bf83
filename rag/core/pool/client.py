"""The client a pool should be handed: timeouts, limits, a lean transport, a lean send.

Requests go out through :class:`rag.core.pool.transport.UpstreamTransport` (asyncio protocols and
llhttp, ``TCP_NODELAY`` on every socket): more than a millisecond less per proxied request than
httpx's own transport, measured in ``bench/pool/latency.py``. One client per upstream kind,
owned by a lifespan.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from rag.core.pool.transport import Answer, UpstreamTransport

KEEPALIVE_EXPIRY = 4.0
"""Seconds an idle upstream connection is kept: below llama-server's 5 s, so a reused
connection is never one the server is closing."""


class PoolClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` with ``open``, the pool's request path: straight to the transport.

    ``AsyncClient.send`` runs auth, redirect and cookie handling that llama-servers never need
    (cookie extraction alone is ~5% of the balancer's CPU per proxied request); ``open`` builds
    the request and hands it to the transport, with the client's timeouts. Everything else (the
    pollers' ``get``) is plain httpx.
    """

    def __init__(self, *, timeout: httpx.Timeout, transport: httpx.AsyncBaseTransport) -> None:
        super().__init__(timeout=timeout, transport=transport)
        self.upstream_transport = transport
        self.raw = isinstance(transport, UpstreamTransport)  # ``exchange`` can be used
        self._timeouts = timeout.as_dict()

    async def open(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | Sequence[tuple[bytes, bytes]] | None = None,
    ) -> httpx.Response:
        """Send a request; the answer's body is left to read (``aread``, ``aiter_raw``)."""
        request = httpx.Request(
            method, _parsed(url), json=json, content=content, headers=headers,
            extensions={"timeout": self._timeouts},
        )  # fmt: skip
        response = await self.upstream_transport.handle_async_request(request)
        response.request = request  # a MockTransport in tests leaves it unset
        return response

    async def exchange(
        self, method: str, url: str, *, content: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> Answer:
        """``open`` for a proxy, where ``raw``: ``headers`` go as they are (with ``Host`` and
        the length of ``content``) and the answer comes as the upstream sent it, without httpx's
        request and response objects (``UpstreamTransport.exchange``)."""
        transport = self.upstream_transport
        assert isinstance(transport, UpstreamTransport), "exchange needs the pool's transport"
        return await transport.exchange(method, url, headers, content, self._timeouts)


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> httpx.URL:
    """``url`` parsed once: a pool sends to a few upstreams' few paths, and httpx's URL parser
    was the largest single cost of building a request (httpx URLs are immutable)."""
    return httpx.URL(url)


def pool_client(
    *, connect: float = 2.0, read: float = 120.0, max_connections: int = 512
) -> PoolClient:
    """A client for upstream llama-servers; ``read`` bounds the gap between streamed chunks."""
    timeout = httpx.Timeout(connect=connect, read=read, write=read, pool=connect)
    transport = UpstreamTransport(
        max_connections=max_connections, keepalive_expiry=KEEPALIVE_EXPIRY
    )
    return PoolClient(timeout=timeout, transport=transport)
