"""The balancer app factory: ``create_balancer_app(settings)``.

The FastAPI app's lifespan owns the one client to the upstreams and the ``Pool``; its routes
(``routes.py``) serve health, pool status and membership, metrics and ``/docs``. The proxied
llama.cpp / OpenAI endpoints are answered by ``proxy.ProxyApp`` (plain ASGI, the hot path) in
front of it, which does the request id, the guard, the body limits and the last-resort 500 in
one layer: the middlewares that do them for the balancer's own routes, and FastAPI's own stack,
are skipped on every proxied request.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.types import ASGIApp

from rag.balancer.busypoll import BusyPoll, window_for
from rag.balancer.guard import Guard, GuardMiddleware, check_upstream_url
from rag.balancer.proxy import ProxyApp, document_proxied_paths
from rag.balancer.routes import router
from rag.balancer.settings import BalancerSettings
from rag.core.pool import PoolMetrics, UpstreamRejected
from rag.core.pool.settings import build_client, build_pool
from rag.web.errors import CatchAllMiddleware, install_error_handlers
from rag.web.limits import BodyLimitMiddleware
from rag.web.requestid import RequestIdMiddleware


def create_balancer_app(settings: BalancerSettings) -> ASGIApp:
    metrics = PoolMetrics()
    window = window_for(settings.busy_poll)
    busy = BusyPoll(window) if window > 0 else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with build_client(settings.pool) as http:
            pool = build_pool("balancer", http, settings.pool, metrics)
            for url in settings.upstreams:
                pool.add_upstream(check_upstream_url(url, settings.allowed_hosts))
            await pool.start()
            app.state.pool = pool
            app.state.settings = settings
            app.state.drains = set()
            # what start-up made lives as long as the process: out of the collector's sight,
            # so its collections scan only request garbage (~10% less CPU per request)
            gc.freeze()
            if busy is not None:
                busy.start()
            try:
                yield
            finally:
                if busy is not None:
                    await busy.stop()
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
    app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_proxied_paths(get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            ))  # fmt: skip
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    upstream_key = settings.pool.upstream_api_key
    guard = Guard(
        admin_keys=[settings.admin_key.get_secret_value()] if settings.admin_key else [],
        client_keys=settings.client_keys(),
    )
    own = RequestIdMiddleware(CatchAllMiddleware(GuardMiddleware(BodyLimitMiddleware(
        app, max_bytes=settings.max_body_bytes, read_timeout=settings.pool.read_timeout
    ), guard)))  # fmt: skip
    return ProxyApp(
        own,
        app,
        guard=guard,
        max_body_bytes=settings.max_body_bytes,
        read_timeout=settings.pool.read_timeout,
        affinity=settings.pool.affinity,
        block=settings.pool.affinity_block_chars,
        upstream_key=upstream_key.get_secret_value() if upstream_key else None,
        busy=busy,
    )


async def _on_rejected(request: Request, exc: Exception) -> Response:
    """A 4xx from the upstream goes to the client as the upstream sent it."""
    assert isinstance(exc, UpstreamRejected)
    return Response(exc.upstream_body, exc.upstream_status, media_type=exc.content_type)
