"""The app factory: ``create_app(settings, runtime)`` builds the FastAPI app whose lifespan builds
the components (``rag.service.components``): shared clients, stores, pools, the answer service
and, in the embedded default, llama.cpp children and workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from rag.api import answer, documents, health, keys, search, usage
from rag.core.settings import Settings, is_loopback
from rag.service.components import Components, EmbeddedRuntime, open_components
from rag.service.keys import bootstrap_admin_key
from rag.service.metrics import Metrics
from rag.service.samples import ingest_samples
from rag.web.errors import install_error_handlers
from rag.web.limits import BodyLimitMiddleware
from rag.web.metrics import HttpMetrics, MetricsMiddleware
from rag.web.requestid import RequestIdMiddleware

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, runtime: EmbeddedRuntime | None = None, *, run_workers: bool = False
) -> FastAPI:
    """``runtime``: children to supervise (``rag run``); ``run_workers``: ingest in-process."""
    if settings.auth == "open" and not is_loopback(settings.host):  # model_copy skips validators
        raise ValueError(f"auth=open is for loopback addresses only, not {settings.host!r}")
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_components(
            settings, metrics, runtime=runtime, run_workers=run_workers
        ) as components:
            app.state.components = components
            note = None
            if not components.auth.open_mode:
                note = await bootstrap_admin_key(components.auth.store, settings)
            announcer = asyncio.create_task(_when_ready(components, note))
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
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        read_timeout=settings.body_read_timeout,
        min_rate=settings.body_min_rate,
        # uploads check their own limit while they stream; multipart framing on top
        large={("POST", "/v1/documents"): settings.max_upload_bytes + 1024 * 1024},
    )
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(metrics.registry))
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(documents.router)
    app.include_router(search.router)
    app.include_router(answer.router)
    app.include_router(keys.router)
    app.include_router(usage.router)
    return app


async def _when_ready(components: Components, key_note: str | None) -> None:
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
    if key_note is None:
        auth, keyed = "  (auth=open: no API keys, loopback only)\n", ""
    else:
        source = (
            "$RAG_ADMIN_KEY"
            if settings.admin_key
            else f"$(cat {settings.admin_key_file.resolve()})"
        )
        auth = f"  {key_note}\n  export RAG_API_KEY={source}\n"
        keyed = ' -H "authorization: Bearer $RAG_API_KEY"'
    print(
        f"\nRAG service ready: {base}  (API docs {base}/docs)\n{auth}"
        f"  search: curl -s {base}/v1/search{keyed} -H 'content-type: application/json' "
        """-d '{"query": "How many slots does -np 4 give?"}'\n"""
        f"  ask:    .venv/bin/rag ask 'Which embedding model is used by default?' --url {base}\n"
        f"  upload: .venv/bin/rag ingest ./my-docs --url {base}\n"
        f"  keys:   .venv/bin/rag keys create --name team-a --collection 'team-a-*'\n",
        flush=True,
    )
