"""The ``httpx.AsyncClient`` a pool should be handed: timeouts, limits, and aiohttp underneath.

Requests go out through :class:`rag.pool.transport.AiohttpTransport` (aiohttp's connection pool
and parser, ``TCP_NODELAY`` on every socket): about a millisecond less per proxied request than
httpx's own transport, measured in ``bench/pool/latency.py``. One client per upstream kind,
owned by a lifespan.
"""

from __future__ import annotations

import httpx

from rag.pool.transport import AiohttpTransport

KEEPALIVE_EXPIRY = 4.0
"""Seconds an idle upstream connection is kept: below llama-server's 5 s, so a reused
connection is never one the server is closing."""


def pool_client(
    *, connect: float = 2.0, read: float = 120.0, max_connections: int = 512
) -> httpx.AsyncClient:
    """A client for upstream llama-servers; ``read`` bounds the gap between streamed chunks."""
    timeout = httpx.Timeout(connect=connect, read=read, write=read, pool=connect)
    transport = AiohttpTransport(max_connections=max_connections, keepalive_expiry=KEEPALIVE_EXPIRY)
    return httpx.AsyncClient(timeout=timeout, transport=transport)
