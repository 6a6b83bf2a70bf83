"""The balancer app factory: ``create_balancer_app(settings)``.

Its lifespan owns the one ``httpx.AsyncClient`` to the upstreams and the ``Pool``; the routes
(``routes.py``) proxy the llama.cpp and OpenAI endpoints through the pool and manage it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from rag.balancer.routes import router
from rag.balancer.settings import BalancerSettings
from rag.errors import install_error_handlers
from rag.pool import Pool, PoolMetrics, UpstreamRejected
from rag.requestid import RequestIdMiddleware


def upstream_client(settings: BalancerSettings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=settings.connect_timeout,
        read=settings.read_timeout,
        write=settings.read_timeout,
        pool=settings.connect_timeout,
    )
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=min(settings.max_connections, 128),
        keepalive_expiry=4.0,  # below llama-server's 5 s, so a reused connection is never stale
    )
    return httpx.AsyncClient(timeout=timeout, limits=limits)


def create_balancer_app(settings: BalancerSettings) -> FastAPI:
    metrics = PoolMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with upstream_client(settings) as http:
            pool = Pool(
                "balancer",
                http,
                policy=settings.policy,
                poll_interval=settings.poll_interval,
                buffer_size=settings.buffer_size,
                buffer_timeout=settings.buffer_timeout,
                quarantine=settings.quarantine,
                metrics=metrics,
                affinity=settings.affinity,
                affinity_slack=settings.affinity_slack,
            )
            for url in settings.upstreams:
                pool.add_upstream(url)
            await pool.start()
            app.state.pool = pool
            app.state.settings = settings
            app.state.drains = set()
            try:
                yield
            finally:
                for task in app.state.drains:
                    task.cancel()
                await pool.stop()

    app = FastAPI(
        title="rag balancer",
        version="0.1.0",
        lifespan=lifespan,
        summary="Slot-aware reverse proxy for a pool of llama.cpp servers",
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_exception_handler(UpstreamRejected, _on_rejected)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(router)
    return app


async def _on_rejected(request: Request, exc: Exception) -> Response:
    """A 4xx from the upstream goes to the client as the upstream sent it."""
    assert isinstance(exc, UpstreamRejected)
    return Response(exc.upstream_body, exc.upstream_status, media_type=exc.content_type)
