"""The balancer's own routes: health, pool status and membership, Prometheus metrics (the
pool's and the upstreams', ``upstream_metrics.py``).

Every other path is proxied to an upstream by ``proxy.ProxyApp`` in front of these.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from rag.balancer.guard import check_upstream_url
from rag.balancer.settings import BalancerSettings
from rag.balancer.upstream_metrics import upstream_metrics
from rag.core.errors import Conflict, NotSupported, UpstreamUnavailable
from rag.core.pool import Pool, PoolMetrics
from rag.web.error_schema import error_responses

log = logging.getLogger(__name__)

router = APIRouter()
ADMIN_ERRORS = error_responses(401, 408, 413)
"""What every admin route may answer besides its own: no or a wrong admin key (the guard), a body
too large or too slow."""


def _pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


@router.get(
    "/health",
    tags=["operations"],
    summary="200 when an upstream can take requests",
    responses=error_responses(503),
)
async def health(request: Request) -> dict[str, Any]:
    upstreams = _pool(request).status()["upstreams"]
    ready = [u for u in upstreams if u["state"] == "healthy" and not u["draining"]]
    if not ready:
        raise UpstreamUnavailable("no upstream is ready", retry_after=1.0)
    return {"status": "ok", "upstreams_ready": len(ready), "upstreams": len(upstreams)}


@router.get(
    "/v1/pool",
    tags=["pool"],
    summary="Upstreams, their slots and the buffer",
    responses=ADMIN_ERRORS,
)
async def pool_status(request: Request) -> dict[str, Any]:
    return _pool(request).status()


class UpstreamIn(BaseModel):
    url: str = Field(
        max_length=2048,
        description="http(s)://host:port, nothing more.",
        examples=["http://127.0.0.1:8081"],
    )


@router.post(
    "/v1/pool/upstreams",
    tags=["pool"],
    summary="Register an upstream",
    status_code=201,
    responses={
        200: {"description": "Registered already: its entry"},
        **ADMIN_ERRORS,
        **error_responses(400, 409, 422),
    },
)
async def add_upstream(request: Request, upstream: UpstreamIn) -> JSONResponse:
    pool = _pool(request)
    settings: BalancerSettings = request.app.state.settings
    url = check_upstream_url(upstream.url, settings.allowed_hosts)
    known = url in pool.urls
    if not known and len(pool.urls) >= settings.max_upstreams:
        raise Conflict(f"the pool holds {settings.max_upstreams} upstreams already")
    pool.add_upstream(url)
    entry = next(u for u in pool.status()["upstreams"] if u["url"] == url)
    return JSONResponse(entry, status_code=200 if known else 201)


@router.delete(
    "/v1/pool/upstreams",
    tags=["pool"],
    summary="Drain and remove an upstream",
    responses={
        202: {"description": "Draining: removed once its requests end"},
        **ADMIN_ERRORS,
        **error_responses(404, 422),
    },
)
async def remove_upstream(request: Request, url: str, wait: bool = False) -> JSONResponse:
    pool = _pool(request)
    url = url.rstrip("/")
    if url not in pool.urls or wait:
        await pool.remove_upstream(url)  # NotFound for an unknown URL
        return JSONResponse({"url": url, "removed": True})
    drain = asyncio.create_task(pool.remove_upstream(url))
    drains: set[asyncio.Task[None]] = request.app.state.drains
    drains.add(drain)
    drain.add_done_callback(drains.discard)
    await asyncio.sleep(0)  # let it mark the upstream as draining
    return JSONResponse({"url": url, "removed": drain.done(), "draining": True}, status_code=202)


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **ADMIN_ERRORS,
        **error_responses(501),
    },
)
async def metrics(request: Request) -> Response:
    """The pool's own families, then the upstreams' llama.cpp families (``--metrics``), each
    labelled by upstream and aggregated without the label."""
    if not request.app.state.settings.metrics:
        raise NotSupported("metrics are off (RAG_BALANCER_METRICS=false)")
    registry: PoolMetrics = request.app.state.metrics
    pool = _pool(request)
    urls = [u["url"] for u in pool.status()["upstreams"] if u["state"] == "healthy"]
    upstreams, headers = await upstream_metrics(
        pool.http, {url: pool.auth_headers(url) for url in urls}
    )
    body = generate_latest(registry.registry) + upstreams.encode()
    response = Response(body, media_type=CONTENT_TYPE_LATEST)
    # spelled as llama-server spells it (Starlette would write it in lower case)
    response.raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    return response
