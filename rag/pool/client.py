"""The ``httpx.AsyncClient`` a pool should be handed: timeouts, limits and ``TCP_NODELAY``.

Without ``TCP_NODELAY`` on the upstream sockets, a request whose headers and body go out in two
writes waits for the peer's delayed ACK (Nagle): several milliseconds per request under uvloop,
measured in ``bench/pool/latency.py``. One client per upstream kind, owned by a lifespan.
"""

from __future__ import annotations

import socket

import httpx

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def pool_client(
    *, connect: float = 2.0, read: float = 120.0, max_connections: int = 512
) -> httpx.AsyncClient:
    """A client for upstream llama-servers; ``read`` bounds the gap between streamed chunks."""
    timeout = httpx.Timeout(connect=connect, read=read, write=read, pool=connect)
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=min(max_connections, 128),
        keepalive_expiry=4.0,  # below llama-server's 5 s, so a reused connection is never stale
    )
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=NODELAY)
    return httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport)
