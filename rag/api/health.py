"""Liveness, readiness, Prometheus metrics, and the state of the supervised children."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from rag.api.auth import KEYED_ERRORS, AdminKey
from rag.api.deps import (
    EmbeddingPoolDep,
    GenerationPoolDep,
    MetricsDep,
    QueryEmbeddingPoolDep,
    RegistryDep,
    StoreDep,
    SupervisorDep,
    WorkersDep,
)
from rag.core.errors import RagError

router = APIRouter(tags=["operations"])
READY_PROBE_TIMEOUT = 3.0


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, dict[str, Any]]
    missing: list[str]


NOT_READY = {
    "model": Readiness,
    "description": "Not ready: `missing` names the checks that failed",
    "headers": {"Retry-After": {"required": True, "schema": {"type": "string"}}},
}


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


@router.get(
    "/readyz",
    summary="Stores, registry, llama.cpp pools and parse processes are ready",
    responses={200: {"model": Readiness}, 503: NOT_READY},
)
async def readyz(
    registry: RegistryDep,
    store: StoreDep,
    embedding_pool: EmbeddingPoolDep,
    generation_pool: GenerationPoolDep,
    query_pool: QueryEmbeddingPoolDep,
    workers: WorkersDep,
) -> JSONResponse:
    probes = await asyncio.gather(
        _probe("registry", registry.ping()),
        _probe("vector_store", store.ping()),
    )
    checks: dict[str, Any] = dict(probes)
    checks["embedding_pool"] = _pool_check(embedding_pool.status())
    checks["generation_pool"] = _pool_check(generation_pool.status())
    if query_pool is not None:  # the query lane's own servers (searches go there)
        checks["embedding_query_pool"] = _pool_check(query_pool.status())
    parse_pool = workers.parse_pool if workers is not None else None
    if parse_pool is not None:  # a process that runs ingestion workers parses in it
        checks["parse_pool"] = parse_pool.status()
    missing = sorted(name for name, check in checks.items() if not check["ok"])
    body = {"status": "not_ready" if missing else "ready", "checks": checks, "missing": missing}
    headers = {"Retry-After": "2"} if missing else {}
    return JSONResponse(body, status_code=503 if missing else 200, headers=headers)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **KEYED_ERRORS},
)
async def metrics(metrics: MetricsDep, _: AdminKey) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/runtime",
    summary="Supervised llama-server children and their state",
    responses=KEYED_ERRORS,
)
async def runtime_children(supervisor: SupervisorDep, _: AdminKey) -> dict[str, Any]:
    children = []
    if supervisor is not None:
        for child in supervisor.children:
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


@router.get(
    "/v1/pool",
    summary="Upstreams of the embedding, query-embedding and generation pools",
    responses=KEYED_ERRORS,
)
async def pools(
    embedding_pool: EmbeddingPoolDep,
    generation_pool: GenerationPoolDep,
    query_pool: QueryEmbeddingPoolDep,
    _: AdminKey,
) -> dict[str, Any]:
    status = {"embedding": embedding_pool.status(), "generation": generation_pool.status()}
    if query_pool is not None:
        status["embedding_query"] = query_pool.status()
    return status
