"""The app factory: ``create_app(settings, runtime)`` builds the FastAPI app whose lifespan builds
the components (``rag.service.components``): shared clients, stores, pools, the answer service
and, in the embedded default, llama.cpp children and workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from rag.api import answer, documents, health, search
from rag.core.settings import Settings
from rag.service.components import Components, EmbeddedRuntime, open_components
from rag.service.metrics import Metrics
from rag.service.samples import ingest_samples
from rag.web.errors import install_error_handlers
from rag.web.metrics import HttpMetrics, MetricsMiddleware
from rag.web.requestid import RequestIdMiddleware

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, runtime: EmbeddedRuntime | None = None, *, run_workers: bool = False
) -> FastAPI:
    """``runtime``: children to supervise (``rag run``); ``run_workers``: ingest in-process."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_components(
            settings, metrics, runtime=runtime, run_workers=run_workers
        ) as components:
            app.state.components = components
            announcer = asyncio.create_task(_when_ready(components))
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
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(metrics.registry))
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(documents.router)
    app.include_router(search.router)
    app.include_router(answer.router)
    return app


async def _when_ready(components: Components) -> None:
    """Once the children are healthy: ingest the samples if asked, and say where to go."""
    settings = components.settings
    if components.supervisor is not None:
        await components.supervisor.wait_healthy(within=float("inf"))
    if settings.ingest_samples:
        try:
            count = await ingest_samples(
                components.registry,
                components.blobs,
                components.workers,
                max_attempts=settings.job_max_attempts,
            )
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
