"""Serving the balancer: logging and uvicorn as both entry points run it (``rag balancer`` and
``python -m rag.balancer``)."""

from __future__ import annotations

import logging

import uvicorn

from rag.balancer.app import create_balancer_app
from rag.balancer.settings import BalancerSettings
from rag.web.server import server_options


def serve(settings: BalancerSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call and poll
    uvicorn.run(
        create_balancer_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        **server_options(
            settings.max_header_bytes, settings.header_read_timeout, http=settings.http
        ),
        access_log=settings.log_level == "debug",  # a line per request costs ~10% of the CPU
        server_header=False,  # the upstream's own Server header passes through
        proxy_headers=False,  # X-Forwarded-* go upstream unchanged; nothing here reads them
    )
