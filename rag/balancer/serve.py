"""Serving the balancer: logging and uvicorn as both entry points run it (``rag balancer`` and
``python -m rag.balancer``).

``host`` may list several addresses, comma-separated, as llama-server's ``--host`` does
(``127.0.0.1,::1``): the balancer then listens on each of them, on the same port.
"""

from __future__ import annotations

import logging
import socket

import uvicorn

from rag.balancer.app import create_balancer_app
from rag.balancer.settings import BalancerSettings
from rag.web.server import server_options


def serve(settings: BalancerSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call and poll
    hosts = addresses(settings.host)
    config = uvicorn.Config(
        create_balancer_app(settings),
        host=hosts[0],
        port=settings.port,
        log_level=settings.log_level,
        **server_options(
            settings.max_header_bytes, settings.header_read_timeout, http=settings.http
        ),
        access_log=settings.log_level == "debug",  # a line per request costs ~10% of the CPU
        server_header=False,  # the upstream's own Server header passes through
        proxy_headers=False,  # X-Forwarded-* go upstream unchanged; nothing here reads them
    )
    server = uvicorn.Server(config)
    if len(hosts) == 1:
        server.run()
        return
    sockets = [listening_socket(host, settings.port) for host in hosts]
    try:
        server.run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()


def addresses(host: str) -> list[str]:
    """The addresses in ``host``: one, or several separated by commas (``[::1]`` as ``::1``)."""
    found = [part.strip().removeprefix("[").removesuffix("]") for part in host.split(",")]
    return [part for part in found if part] or [host]


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (IPv4 or IPv6, as ``host`` resolves)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock
