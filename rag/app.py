"""The app factory: ``create_app(settings, runtime)`` builds the FastAPI app whose lifespan owns
the shared clients, stores, pools and, in the embedded default, llama.cpp children and workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ingest import api as documents_api
from ingest.samples import ingest_samples
from rag.api import answer as answer_api
from rag.api import health
from rag.api import search as search_api
from rag.errors import install_error_handlers
from rag.metrics import Metrics, MetricsMiddleware
from rag.requestid import RequestIdMiddleware
from rag.services import EmbeddedRuntime, Services, open_services
from rag.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, runtime: EmbeddedRuntime | None = None, *, run_workers: bool = False
) -> FastAPI:
    """``runtime``: children to supervise (``rag run``); ``run_workers``: ingest in-process."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(
            settings, metrics, runtime=runtime, run_workers=run_workers
        ) as services:
            app.state.services = services
            announcer = asyncio.create_task(_when_ready(settings, services))
            try:
                yield
            finally:
                announcer.cancel()

    app = FastAPI(
        title="RAG service",
        version="0.1.0",
        lifespan=lifespan,
        summary="Retrieval-augmented generation on llama.cpp",
    )
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(documents_api.router)
    app.include_router(search_api.router)
    app.include_router(answer_api.router)
    return app


async def _when_ready(settings: Settings, services: Services) -> None:
    """Once the children are healthy: ingest the samples if asked, and say where to go."""
    if services.supervisor is not None:
        await services.supervisor.wait_healthy(within=float("inf"))
    if settings.ingest_samples:
        try:
            count = await ingest_samples(services)
        except Exception:
            log.exception("ingesting the sample documents failed")
        else:
            log.info("queued %d sample documents into collection 'default'", count)
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"\nRAG service ready: {base}  (API docs {base}/docs)\n"
        f"  search: curl -s {base}/v1/search -H 'content-type: application/json' "
        """-d '{"query": "How many slots does -np 4 give?"}'\n"""
        f"  ask:    .venv/bin/rag ask 'Which embedding model is used by default?' --url {base}\n"
        f"  upload: .venv/bin/rag ingest ./my-docs --url {base}\n",
        flush=True,
    )
