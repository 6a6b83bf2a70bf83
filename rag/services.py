"""Wiring: the clients and components one process owns, opened and closed in one place.

``open_services`` is used by the API's lifespan (``rag run``, ``rag serve``) and by ``rag worker``,
so that the embedded default and a scaled deployment run the same code with other settings.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from ingest.blobs import BlobStore
from ingest.chunking import ChunkingOptions
from ingest.pipeline import IngestOptions, prepare_parse_process
from ingest.registry import Registry
from ingest.worker import Workers
from rag.embeddings import Embedder
from rag.metrics import Metrics
from rag.pool import Pool
from rag.pool.client import PoolClient, pool_client
from rag.runtime.paths import EMBEDDING_DIMENSIONS
from rag.runtime.supervisor import Child, ChildSpec, ChildState, Supervisor
from rag.search import Searcher
from rag.settings import Settings
from rag.vectorstore import VectorStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedRuntime:
    """The llama-server children this process starts and supervises."""

    binary: Path
    specs: list[ChildSpec]


@dataclass
class Services:
    """What a process owns; handed to routes as ``request.app.state.services``."""

    settings: Settings
    metrics: Metrics
    embedding_http: PoolClient
    generation_http: PoolClient
    embedding_pool: Pool
    generation_pool: Pool
    registry: Registry
    blobs: BlobStore
    store: VectorStore
    embedder: Embedder
    searcher: Searcher
    supervisor: Supervisor | None = None
    workers: Workers | None = None


def ingest_options(settings: Settings) -> IngestOptions:
    return IngestOptions(
        chunking=ChunkingOptions(
            size_tokens=settings.chunk_size_tokens,
            overlap_tokens=settings.chunk_overlap_tokens,
            rows_per_chunk=settings.csv_rows_per_chunk,
        ),
        embedding_max_tokens=settings.embedding_max_tokens,
        # one group keeps every embedding call of a round in flight
        upsert_batch=settings.embedding_batch_size * settings.embedding_concurrency,
    )


def _pool(name: str, settings: Settings, http: PoolClient, metrics: Metrics) -> Pool:
    return Pool(
        name,
        http,
        policy=settings.pool_policy,
        poll_interval=settings.pool_poll_interval,
        buffer_size=settings.pool_buffer_size,
        buffer_timeout=settings.pool_buffer_timeout,
        handoff_tokens=settings.pool_handoff_tokens,
        affinity_wait=settings.pool_affinity_wait,
        metrics=metrics.pool,
    )


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    metrics: Metrics,
    *,
    runtime: EmbeddedRuntime | None = None,
    run_workers: bool = False,
) -> AsyncIterator[Services]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    connect, read = settings.upstream_connect_timeout, settings.upstream_read_timeout
    async with contextlib.AsyncExitStack() as stack:
        # one client per upstream kind (aiohttp underneath, see rag/pool/client.py)
        embedding_http = await stack.enter_async_context(pool_client(connect=connect, read=read))
        generation_http = await stack.enter_async_context(pool_client(connect=connect, read=read))
        embedding_pool = _pool("embedding", settings, embedding_http, metrics)
        generation_pool = _pool("generation", settings, generation_http, metrics)
        for url in settings.embedding_urls:
            embedding_pool.add_upstream(url)
        for url in settings.generation_urls:
            generation_pool.add_upstream(url)
        await embedding_pool.start()
        stack.push_async_callback(embedding_pool.stop)
        await generation_pool.start()
        stack.push_async_callback(generation_pool.stop)

        registry = await Registry.connect(settings.registry_url, schema=settings.database_schema)
        stack.push_async_callback(registry.close)
        blobs = BlobStore(settings.data_dir / "blobs")
        store = VectorStore.open(
            url=settings.qdrant_url,
            path=str(settings.data_dir / "qdrant"),
            timeout=settings.qdrant_timeout,
            dimensions=EMBEDDING_DIMENSIONS,
        )
        stack.push_async_callback(store.close)
        embedder = Embedder(
            embedding_pool,
            batch_size=settings.embedding_batch_size,
            concurrency=settings.embedding_concurrency,
        )
        stack.push_async_callback(embedder.close)
        services = Services(
            settings=settings,
            metrics=metrics,
            embedding_http=embedding_http,
            generation_http=generation_http,
            embedding_pool=embedding_pool,
            generation_pool=generation_pool,
            registry=registry,
            blobs=blobs,
            store=store,
            embedder=embedder,
            searcher=Searcher(
                store,
                embedder,
                max_query_tokens=settings.embedding_max_tokens,
                score_threshold=settings.score_threshold,
            ),
        )
        if runtime is not None:
            services.supervisor = _supervisor(settings, runtime, services)
            await services.supervisor.start()
            stack.push_async_callback(services.supervisor.stop)
        if run_workers and settings.workers > 0:
            # spawn, not fork: a forked child would inherit (and outlive us holding) the lock of
            # Qdrant local mode and every other descriptor this process has open; and each
            # worker dies with us, even when we are SIGKILLed
            executor = stack.enter_context(
                ProcessPoolExecutor(
                    settings.parse_processes,
                    mp_context=get_context("spawn"),
                    initializer=prepare_parse_process,
                    initargs=(os.getpid(),),
                )
            )
            for _ in range(settings.parse_processes):  # start and warm them now, not on the
                executor.submit(int)  # first upload
            services.workers = Workers(
                registry=registry,
                blobs=blobs,
                store=store,
                embedder=embedder,
                options=ingest_options(settings),
                executor=executor,
                concurrency=settings.workers,
                lease_seconds=settings.job_lease_seconds,
                progress_interval=settings.job_progress_interval,
            )
            services.workers.start()
            stack.push_async_callback(services.workers.stop)
        yield services


def _supervisor(settings: Settings, runtime: EmbeddedRuntime, services: Services) -> Supervisor:
    """Supervise the children; each registers in its pool while healthy."""
    supervisor = Supervisor(
        runtime.binary,
        runtime.specs,
        logs_dir=settings.logs_dir,
        http=services.generation_http,
        start_timeout=settings.child_start_timeout,
        backoff_max=settings.child_restart_backoff_max,
    )
    metrics = services.metrics

    def on_change(child: Child) -> None:
        pool = (
            services.embedding_pool if child.spec.role == "embedding" else services.generation_pool
        )
        labels = (child.spec.name, child.spec.role)
        metrics.child_up.labels(*labels).set(1 if child.state is ChildState.HEALTHY else 0)
        metrics.child_restarts.labels(*labels).set(child.restarts)
        if child.state is ChildState.STARTING and child.restarts == 0:
            pool.add_upstream(child.spec.url)  # the pool's poller tracks its health from here

    supervisor.subscribe(on_change)
    return supervisor
