"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rag.app_state import services_of

router = APIRouter(tags=["operations"])
_PROBE_TIMEOUT = httpx.Timeout(2.0)


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _probe(http: httpx.AsyncClient, url: str) -> str | None:
    """None when ``url``/health answers 200, else what is wrong."""
    try:
        response = await http.get(f"{url}/health", timeout=_PROBE_TIMEOUT)
    except httpx.HTTPError as exc:
        return f"unreachable ({type(exc).__name__})"
    if response.status_code != 200:
        return f"not ready (HTTP {response.status_code})"
    return None


@router.get("/readyz", summary="Stores, registry and llama.cpp pools are reachable")
async def readyz(request: Request) -> JSONResponse:
    services = services_of(request)
    checks: dict[str, Any] = {}
    groups = {"embedding": services.embedding_urls, "generation": services.generation_urls}
    for role, urls in groups.items():
        results = await asyncio.gather(*(_probe(services.http, url) for url in urls))
        problems = {url: problem for url, problem in zip(urls, results, strict=True) if problem}
        if not urls:
            checks[role] = {"ok": False, "problem": "no upstream configured"}
        else:
            checks[role] = {"ok": not problems, "upstreams": len(urls), "problems": problems}
    ready = all(check["ok"] for check in checks.values())
    missing = sorted(name for name, check in checks.items() if not check["ok"])
    body = {"status": "ready" if ready else "not_ready", "checks": checks, "missing": missing}
    headers = {} if ready else {"Retry-After": "2"}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry = services_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/runtime", summary="Supervised llama-server children and their state")
async def runtime_children(request: Request) -> dict[str, Any]:
    services = services_of(request)
    children = []
    if services.supervisor is not None:
        for child in services.supervisor.children:
            children.append(
                {
                    "name": child.spec.name,
                    "role": child.spec.role,
                    "url": child.spec.url,
                    "state": child.state.value,
                    "pid": child.pid,
                    "restarts": child.restarts,
                    "last_exit": child.last_exit,
                }
            )
    return {
        "children": children,
        "embedding_urls": services.embedding_urls,
        "generation_urls": services.generation_urls,
    }
