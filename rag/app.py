"""The app factory: ``create_app(settings, runtime)`` builds the FastAPI app whose lifespan owns
the shared clients and, in the embedded default, the supervised llama.cpp children."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import FastAPI

from rag.api import health
from rag.errors import install_error_handlers
from rag.metrics import Metrics, MetricsMiddleware
from rag.requestid import RequestIdMiddleware
from rag.runtime.supervisor import Child, ChildSpec, ChildState, Supervisor
from rag.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedRuntime:
    """The llama-server children this process starts and supervises."""

    binary: Path
    specs: list[ChildSpec]


@dataclass
class Services:
    """What the lifespan owns and hands down to the routes (``request.app.state.services``)."""

    settings: Settings
    metrics: Metrics
    http: httpx.AsyncClient
    supervisor: Supervisor | None = None
    embedding_urls: list[str] = field(default_factory=list)
    generation_urls: list[str] = field(default_factory=list)


def upstream_timeout(settings: Settings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.upstream_connect_timeout,
        read=settings.upstream_read_timeout,
        write=settings.upstream_read_timeout,
        pool=settings.upstream_connect_timeout,
    )


def create_app(settings: Settings, runtime: EmbeddedRuntime | None = None) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=upstream_timeout(settings), limits=limits) as http:
            services = Services(
                settings=settings,
                metrics=metrics,
                http=http,
                embedding_urls=list(settings.embedding_urls),
                generation_urls=list(settings.generation_urls),
            )
            if runtime is not None:
                services.supervisor = _supervisor(settings, runtime, http, services, metrics)
                await services.supervisor.start()
            app.state.services = services
            announcer = asyncio.create_task(_announce_when_ready(settings, services))
            try:
                yield
            finally:
                announcer.cancel()
                if services.supervisor is not None:
                    await services.supervisor.stop()

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
    return app


def _supervisor(
    settings: Settings,
    runtime: EmbeddedRuntime,
    http: httpx.AsyncClient,
    services: Services,
    metrics: Metrics,
) -> Supervisor:
    supervisor = Supervisor(
        runtime.binary,
        runtime.specs,
        logs_dir=settings.logs_dir,
        http=http,
        start_timeout=settings.child_start_timeout,
        backoff_max=settings.child_restart_backoff_max,
    )
    for spec in runtime.specs:
        urls = services.embedding_urls if spec.role == "embedding" else services.generation_urls
        urls.append(spec.url)

    def on_change(child: Child) -> None:
        labels = (child.spec.name, child.spec.role)
        metrics.child_up.labels(*labels).set(1 if child.state is ChildState.HEALTHY else 0)
        metrics.child_restarts.labels(*labels).set(child.restarts)

    supervisor.subscribe(on_change)
    return supervisor


async def _announce_when_ready(settings: Settings, services: Services) -> None:
    if services.supervisor is not None:
        while not services.supervisor.all_healthy():
            await asyncio.sleep(0.2)
    base = f"http://{settings.host}:{settings.port}"
    log.info("ready: send requests to %s (API docs at %s/docs)", base, base)
