"""Liveness, readiness, Prometheus metrics, and the state of the supervised children."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rag.app_state import services_of
from rag.errors import RagError

router = APIRouter(tags=["operations"])
READY_PROBE_TIMEOUT = 3.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _pool_check(status: dict[str, Any]) -> dict[str, Any]:
    upstreams = status.get("upstreams", [])
    ready = [u["url"] for u in upstreams if u.get("state") == "healthy" and not u.get("draining")]
    if not upstreams:
        return {"ok": False, "problem": "no upstream registered"}
    if not ready:
        states = {u["url"]: u.get("state") for u in upstreams}
        return {"ok": False, "problem": "no upstream ready", "upstreams": states}
    return {"ok": True, "ready": len(ready), "upstreams": len(upstreams)}


async def _probe(name: str, check: Any) -> tuple[str, dict[str, Any]]:
    try:
        await asyncio.wait_for(check, READY_PROBE_TIMEOUT)
    except TimeoutError:
        return name, {"ok": False, "problem": f"no answer within {READY_PROBE_TIMEOUT} s"}
    except RagError as exc:
        return name, {"ok": False, "problem": exc.message}
    except Exception as exc:
        return name, {"ok": False, "problem": type(exc).__name__}
    return name, {"ok": True}


@router.get("/readyz", summary="Stores, registry and llama.cpp pools are reachable")
async def readyz(request: Request) -> JSONResponse:
    services = services_of(request)
    probes = await asyncio.gather(
        _probe("registry", services.registry.ping()),
        _probe("vector_store", services.store.ping()),
    )
    checks: dict[str, Any] = dict(probes)
    checks["embedding_pool"] = _pool_check(services.embedding_pool.status())
    checks["generation_pool"] = _pool_check(services.generation_pool.status())
    missing = sorted(name for name, check in checks.items() if not check["ok"])
    body = {"status": "not_ready" if missing else "ready", "checks": checks, "missing": missing}
    headers = {"Retry-After": "2"} if missing else {}
    return JSONResponse(body, status_code=503 if missing else 200, headers=headers)


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
    return {"children": children}


@router.get("/v1/pool", summary="Upstreams of the embedding and generation pools")
async def pools(request: Request) -> dict[str, Any]:
    services = services_of(request)
    return {
        "embedding": services.embedding_pool.status(),
        "generation": services.generation_pool.status(),
    }
