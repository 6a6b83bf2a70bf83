"""The components one process builds once at start-up from its settings, and closes in one place.

``open_components`` is used by the API's lifespan (``rag run``, ``rag serve``) and by
``rag worker``, so that the embedded default and a scaled deployment run the same code with other
settings. Everything is built here, eagerly, and handed down: each route and each worker takes
the parts it needs (``rag/api/deps.py``), never the whole.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ingest.blobs import BlobStore
from ingest.chunking import ChunkingOptions
from ingest.parsepool import ParsePool, ParsePoolOptions
from ingest.parsing import ParseLimits
from ingest.pipeline import IngestOptions, prepare_parse_process
from ingest.registry import KeyStore, MetadataStore, Registry, RevocationWatch, UsageStore
from ingest.worker import Workers
from rag.answer import AnswerService
from rag.core.embeddings import Embedder
from rag.core.pool import Pool
from rag.core.pool.client import PoolClient
from rag.core.pool.settings import build_client, build_pool
from rag.core.runtime.children import QUERY_EMBEDDING_ROLE
from rag.core.runtime.membership import follow_supervisor
from rag.core.runtime.paths import EMBEDDING_DIMENSIONS
from rag.core.runtime.supervisor import Child, ChildSpec, ChildState, Supervisor
from rag.core.search import Searcher
from rag.core.settings import Settings
from rag.core.vectorstore import VectorStore
from rag.service.keys import Authenticator
from rag.service.metrics import Metrics
from rag.service.usage import UsageRecorder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedRuntime:
    """The llama-server children this process starts and supervises."""

    binary: Path
    specs: list[ChildSpec]


@dataclass(frozen=True)
class Components:
    """What a process built at start-up. Nothing is added later, and nothing takes it whole:
    the app's dependencies and the workers each get their part."""

    settings: Settings
    metrics: Metrics
    embedding_pool: Pool
    query_embedding_pool: Pool | None  # the query lane's own servers, if it has any
    generation_pool: Pool
    registry: Registry
    blobs: BlobStore
    store: VectorStore
    embedder: Embedder  # ingestion's
    query_embedder: Embedder  # the query lane: search, answers, citation checks
    searcher: Searcher
    answers: AnswerService
    supervisor: Supervisor | None
    workers: Workers | None
    auth: Authenticator  # API keys (the HTTP app bootstraps the admin key)
    usage: UsageStore  # tokens per key, collection and day
    recorder: UsageRecorder  # what this process uses, on its way to `usage` and the metrics


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
        limits=ParseLimits(
            max_pages=settings.parse_max_pages,
            max_expansion=settings.max_decompression_ratio,
            ocr=settings.ocr,
            ocr_dpi=settings.ocr_dpi,
            ocr_language=settings.ocr_language,
        ),
        parse_timeout=settings.parse_timeout_seconds,
        memory_limit_mb=settings.parse_memory_mb or None,
    )


@contextlib.asynccontextmanager
async def open_components(
    settings: Settings,
    metrics: Metrics,
    *,
    runtime: EmbeddedRuntime | None = None,
    run_workers: bool = False,
) -> AsyncIterator[Components]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        # one client per upstream kind (rag/core/pool/client.py)
        embedding_http = await stack.enter_async_context(build_client(settings.pool))
        generation_http = await stack.enter_async_context(build_client(settings.pool))
        embedding_pool = build_pool("embedding", embedding_http, settings.pool, metrics.pool)
        generation_pool = build_pool("generation", generation_http, settings.pool, metrics.pool)
        for url in settings.embedding_urls:
            embedding_pool.add_upstream(url)
        for url in settings.generation_urls:
            generation_pool.add_upstream(url)
        await embedding_pool.start()
        stack.push_async_callback(embedding_pool.stop)
        await generation_pool.start()
        stack.push_async_callback(generation_pool.stop)
        query_pool = _query_embedding_pool(settings, runtime, embedding_http, metrics)
        if query_pool is not None:
            await query_pool.start()
            stack.push_async_callback(query_pool.stop)

        supervisor = None
        if runtime is not None:
            supervisor = _supervisor(settings, runtime, generation_http, metrics)
            follow_supervisor(embedding_pool, supervisor, "embedding")
            follow_supervisor(generation_pool, supervisor, "generation")
            if query_pool is not None:
                follow_supervisor(query_pool, supervisor, QUERY_EMBEDDING_ROLE)
            await supervisor.start()
            stack.push_async_callback(supervisor.stop)

        registry = await Registry.connect(settings.registry_url, schema=settings.database_schema)
        stack.push_async_callback(registry.close)
        usage = UsageStore(registry.engine)
        recorder = UsageRecorder(usage, metrics.tokens, flush_seconds=settings.usage_flush_seconds)
        recorder.start()
        stack.push_async_callback(recorder.close)  # after the embedders and workers stopped
        revocations = RevocationWatch(registry.engine)
        await revocations.start()
        stack.push_async_callback(revocations.close)
        auth = Authenticator(
            KeyStore(registry.engine),
            open_mode=settings.auth == "open",
            cache_seconds=settings.auth_cache_seconds,
            rate_per_minute=settings.key_rate_per_minute,
            revocations=revocations.epoch,
        )
        blobs = BlobStore(settings.data_dir / "blobs")
        # what a crashed process left of its uploads (API and workers alike write there)
        removed = await blobs.remove_stale_temp(settings.stale_upload_seconds)
        if removed:
            log.info("removed %d stale temporary upload file(s)", removed)
        store = VectorStore.from_settings(settings, dimensions=EMBEDDING_DIMENSIONS)
        stack.push_async_callback(store.close)
        embedder = Embedder(
            embedding_pool,
            batch_size=settings.embedding_batch_size,
            concurrency=settings.embedding_concurrency,
            on_usage=recorder.embedded,
        )
        stack.push_async_callback(embedder.close)
        query_embedder = embedder  # the lane switched off: one queue for everything
        if settings.embedding_query_lane:
            query_embedder = Embedder(
                query_pool or embedding_pool,
                batch_size=settings.embedding_batch_size,
                concurrency=settings.embedding_concurrency,
                on_usage=recorder.embedded,
            )
            stack.push_async_callback(query_embedder.close)
        searcher = Searcher(
            store,
            query_embedder,
            documents=MetadataStore(registry.engine),  # metadata: once per document, there
            max_query_tokens=settings.embedding_max_tokens,
            score_threshold=settings.score_threshold,
            max_metadata_matches=settings.metadata_filter_max_documents,
        )
        answers = AnswerService(
            searcher=searcher, pool=generation_pool, embedder=query_embedder, settings=settings
        )
        workers = None
        if run_workers and settings.workers > 0:
            parse_pool = await _parse_pool(settings, stack)
            workers = _workers(settings, registry, blobs, store, embedder, parse_pool)
            workers.start()
            stack.push_async_callback(workers.stop)
        yield Components(
            settings=settings,
            metrics=metrics,
            embedding_pool=embedding_pool,
            query_embedding_pool=query_pool,
            generation_pool=generation_pool,
            registry=registry,
            blobs=blobs,
            store=store,
            embedder=embedder,
            query_embedder=query_embedder,
            searcher=searcher,
            answers=answers,
            supervisor=supervisor,
            workers=workers,
            auth=auth,
            usage=usage,
            recorder=recorder,
        )


def _query_embedding_pool(
    settings: Settings, runtime: EmbeddedRuntime | None, http: PoolClient, metrics: Metrics
) -> Pool | None:
    """The pool of the embedding servers reserved for queries (``embedding_query_urls`` or the
    supervised children of that role), or None where there are none: queries then share the
    ingestion pool, still on a queue of their own."""
    children = runtime is not None and any(s.role == QUERY_EMBEDDING_ROLE for s in runtime.specs)
    if not settings.embedding_query_lane or not (settings.embedding_query_urls or children):
        return None
    pool = build_pool("embedding-query", http, settings.pool, metrics.pool)
    for url in settings.embedding_query_urls:
        pool.add_upstream(url)
    return pool


def _supervisor(
    settings: Settings, runtime: EmbeddedRuntime, http: PoolClient, metrics: Metrics
) -> Supervisor:
    """Supervise the children; their state shows in the metrics."""
    supervisor = Supervisor(
        runtime.binary,
        runtime.specs,
        logs_dir=settings.logs_dir,
        http=http,
        start_timeout=settings.child_start_timeout,
        backoff_max=settings.child_restart_backoff_max,
        api_keys=True,  # each start a new key, which only the pools get (membership.py)
    )

    def on_change(child: Child) -> None:
        labels = (child.spec.name, child.spec.role)
        if child.state is ChildState.STOPPED and child not in supervisor.children:
            for gauge in (metrics.child_up, metrics.child_restarts):  # removed: its series go
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
            return
        metrics.child_up.labels(*labels).set(1 if child.state is ChildState.HEALTHY else 0)
        metrics.child_restarts.labels(*labels).set(child.restarts)

    supervisor.subscribe(on_change)
    return supervisor


def _workers(
    settings: Settings,
    registry: Registry,
    blobs: BlobStore,
    store: VectorStore,
    embedder: Embedder,
    parse_pool: ParsePool,
) -> Workers:
    return Workers(
        registry=registry,
        blobs=blobs,
        store=store,
        embedder=embedder,
        options=ingest_options(settings),
        executor=parse_pool,
        concurrency=settings.workers,
        lease_seconds=settings.job_lease_seconds,
        progress_interval=settings.job_progress_interval,
        stall_seconds=settings.job_stall_seconds,
    )


async def _parse_pool(settings: Settings, stack: contextlib.AsyncExitStack) -> ParsePool:
    """Supervised parse processes (spawned, not forked: a forked child would inherit the lock of
    Qdrant local mode and every descriptor this process holds; each dies with us), started and
    warmed now rather than on the first upload."""
    memory = settings.parse_memory_mb * 2**20 if settings.parse_memory_mb else None
    pool = ParsePool(
        ParsePoolOptions(
            processes=settings.parse_processes,
            memory_bytes=memory,
            initializer=prepare_parse_process,
        )
    )
    await pool.start()
    stack.push_async_callback(pool.close)
    return pool
