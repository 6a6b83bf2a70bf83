"""The balancer's routes: the llama-server / OpenAI endpoints proxied through the pool, pool
status and membership, health and Prometheus metrics.

Proxying keeps bytes unchanged in both directions. While a request waits for a slot or for the
upstream's answer, a client that disconnects cancels it (and frees its slot); once the answer
streams, ``UpstreamStreamingResponse`` closes the upstream response however the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, HttpUrl
from starlette.types import Receive, Scope, Send

from rag.balancer.settings import BalancerSettings
from rag.errors import UpstreamUnavailable
from rag.pool import Pool, PoolMetrics
from rag.pool.prefix import request_prefix
from rag.pool.proxy import forward_headers, response_headers

log = logging.getLogger(__name__)

router = APIRouter()

GENERATION_PATHS = (
    "/completion", "/completions", "/v1/completions", "/chat/completions", "/v1/chat/completions",
)  # fmt: skip
OTHER_POST_PATHS = (
    "/v1/embeddings", "/embeddings", "/embedding", "/tokenize", "/detokenize", "/infill",
    "/apply-template",
)  # fmt: skip
PROXIED_GET_PATHS = ("/v1/models", "/models", "/props")


def _pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


class UpstreamStreamingResponse(StreamingResponse):
    """Streams an opened upstream response; closes it and frees its slot however it ends."""

    def __init__(self, upstream: httpx.Response, stack: AsyncExitStack) -> None:
        self._chunks = _chunks(upstream)
        super().__init__(
            self._chunks,
            status_code=upstream.status_code,
            headers=response_headers(upstream.headers),
        )
        self._stack = stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._chunks.aclose()
            finally:
                await self._stack.aclose()


async def _chunks(upstream: httpx.Response) -> AsyncGenerator[bytes, None]:
    async for chunk in upstream.aiter_raw():
        yield chunk


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _proxy(request: Request) -> Response:
    pool = _pool(request)
    settings: BalancerSettings = request.app.state.settings
    path = request.url.path
    body = await request.body()
    prefix: tuple[str, ...] = ()
    if path in GENERATION_PATHS and settings.affinity and body:
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        prefix = request_prefix(path, parsed, block=settings.affinity_block_chars)
    target = f"{path}?{request.url.query}" if request.url.query else path
    stack = AsyncExitStack()
    opening = asyncio.ensure_future(
        stack.enter_async_context(
            pool.stream(
                request.method,
                target,
                content=body or None,
                headers=forward_headers(request.headers),
                prefix_key=prefix,
            )
        )
    )
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({opening, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not opening.done():  # the client left (or this handler was cancelled): give up
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
            await stack.aclose()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    if opening.cancelled():
        log.info("client left %s %s before the upstream answered", request.method, path)
        return Response(status_code=499)
    try:
        upstream = opening.result()
    except BaseException:
        await stack.aclose()
        raise
    return UpstreamStreamingResponse(upstream, stack)


for _path in GENERATION_PATHS + OTHER_POST_PATHS:
    router.add_api_route(_path, _proxy, methods=["POST"], include_in_schema=True, tags=["proxy"])
for _path in PROXIED_GET_PATHS:
    router.add_api_route(_path, _proxy, methods=["GET"], tags=["proxy"])


@router.get("/health", tags=["operations"], summary="200 when an upstream can take requests")
async def health(request: Request) -> dict[str, Any]:
    upstreams = _pool(request).status()["upstreams"]
    ready = [u for u in upstreams if u["state"] == "healthy" and not u["draining"]]
    if not ready:
        raise UpstreamUnavailable("no upstream is ready", retry_after=1.0)
    return {"status": "ok", "upstreams_ready": len(ready), "upstreams": len(upstreams)}


@router.get("/v1/pool", tags=["pool"], summary="Upstreams, their slots and the buffer")
async def pool_status(request: Request) -> dict[str, Any]:
    return _pool(request).status()


class UpstreamIn(BaseModel):
    url: HttpUrl


@router.post("/v1/pool/upstreams", tags=["pool"], summary="Register an upstream")
async def add_upstream(request: Request, upstream: UpstreamIn) -> JSONResponse:
    pool = _pool(request)
    url = str(upstream.url).rstrip("/")
    known = url in pool.urls
    pool.add_upstream(url)
    entry = next(u for u in pool.status()["upstreams"] if u["url"] == url)
    return JSONResponse(entry, status_code=200 if known else 201)


@router.delete("/v1/pool/upstreams", tags=["pool"], summary="Drain and remove an upstream")
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


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    registry: PoolMetrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
