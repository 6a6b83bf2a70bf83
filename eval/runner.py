"""One evaluation run through the production path: ingest the corpus, run the queries, score.

Ingestion calls :func:`ingest.pipeline.ingest_document` for every corpus document (parsing,
chunking, exact token measuring, llama.cpp embeddings, Qdrant upsert with BM25 sparse vectors),
and queries go through :class:`rag.core.search.Searcher`, the code behind ``POST /v1/search``.

**Collection.** Each dataset and index configuration gets a collection of its own,
``eval-<dataset>-<hash>``, where the hash covers everything that shapes the index (chunking,
embedding limit and truncation, model identity). Every document's payload carries the sha256 of
its content; a re-run reads those hashes back and ingests only documents that are new or changed
(and deletes those gone from the corpus), so a second run with the same settings skips ingestion.
Documents new to the collection are ingested with ``fresh=True``: no stale chunks to delete.

**Document scores.** Search returns chunks; a document's score is the **maximum over its
chunks' scores** (its best passage, "MaxP"), and documents are ranked by it. To rank ``top_k``
documents, ``top_k * oversample`` chunks are asked for (``oversample`` is 1 when every document
is one chunk), so that documents with many matching chunks do not crowd others out. Max rather
than sum keeps long documents from winning by length; it is what BEIR's passage-level baselines
and most RAG evaluations use.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from qdrant_client import models

from eval.datasets import Dataset, Document
from eval.truncation import TruncatingEmbedder
from ingest.chunking import ChunkingOptions
from ingest.pipeline import DocumentFailed, DocumentInfo, IngestOptions, ingest_document
from rag.core.embeddings import Embedder
from rag.core.errors import InvalidRequest
from rag.core.search import Searcher
from rag.core.settings import Settings
from rag.core.vectorstore import Retrieval, VectorStore

Chunking = Literal["default", "document"]
Progress = Callable[[str, int, int], None]
"""Called with (stage, done, total)."""

DOCUMENT_CHUNK_TOKENS = 1_000_000  # "one chunk per document": larger than any document
CHUNK_OVERSAMPLE = 3
INDEX_RECIPE = 1  # bump when the way documents are turned into points changes


def _quiet(stage: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class RunOptions:
    """What a run varies. ``chunking="document"`` with ``truncate`` is the reference setting."""

    retrieval: Retrieval = "dense"
    chunking: Chunking = "default"
    truncate: bool = False
    top_k: int = 100
    chunk_size_tokens: int = 200
    chunk_overlap_tokens: int = 32
    csv_rows_per_chunk: int = 0
    embedding_max_tokens: int = 256

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RunOptions:
        values: dict[str, Any] = {
            "retrieval": settings.retrieval,
            "top_k": settings.eval_top_k,
            "chunk_size_tokens": settings.chunk_size_tokens,
            "chunk_overlap_tokens": settings.chunk_overlap_tokens,
            "csv_rows_per_chunk": settings.csv_rows_per_chunk,
            "embedding_max_tokens": settings.embedding_max_tokens,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def index_settings(self) -> dict[str, Any]:
        """Everything that determines what the collection holds."""
        chunking: dict[str, Any] = {"mode": self.chunking}
        if self.chunking == "default":
            chunking |= {
                "size_tokens": self.chunk_size_tokens,
                "overlap_tokens": self.chunk_overlap_tokens,
                "csv_rows_per_chunk": self.csv_rows_per_chunk,
            }
        return {
            "recipe": INDEX_RECIPE,
            "chunking": chunking,
            "embedding_max_tokens": self.embedding_max_tokens,
            "too_long": "truncate" if self.truncate else "split",
        }

    def ingest_options(self) -> IngestOptions:
        if self.chunking == "document":
            chunking = ChunkingOptions(size_tokens=DOCUMENT_CHUNK_TOKENS, overlap_tokens=0)
        else:
            chunking = ChunkingOptions(
                size_tokens=self.chunk_size_tokens,
                overlap_tokens=self.chunk_overlap_tokens,
                rows_per_chunk=self.csv_rows_per_chunk,
            )
        return IngestOptions(chunking=chunking, embedding_max_tokens=self.embedding_max_tokens)

    @property
    def oversample(self) -> int:
        return 1 if self.chunking == "document" else CHUNK_OVERSAMPLE


def index_hash(options: RunOptions, model: dict[str, Any]) -> str:
    identity = {"index": options.index_settings(), "model": model.get("sha256") or model}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def collection_name(dataset: Dataset, options: RunOptions, model: dict[str, Any]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", dataset.name.lower()).strip("-") or "dataset"
    return f"eval-{slug}-{index_hash(options, model)[:12]}"


@dataclass
class IngestStats:
    documents: int = 0
    ingested: int = 0
    skipped: int = 0
    removed: int = 0
    chunks: int = 0
    points: int = 0
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        rate = self.seconds if self.seconds > 0 else float("nan")
        return {
            **asdict(self),
            "documents_per_second": self.ingested / rate if self.ingested else None,
            "chunks_per_second": self.chunks / rate if self.chunks else None,
        }


async def ingested_hashes(store: VectorStore, collection: str) -> dict[str, str]:
    """Content hash of every document in the collection, read from its first chunk's payload
    (``content_sha256``; ``metadata.content_sha256`` in collections ingested before that)."""
    if not await store.collection_exists(collection):
        return {}
    first = models.Filter(
        must=[models.FieldCondition(key="chunk_index", match=models.MatchValue(value=0))]
    )
    found: dict[str, str] = {}
    fields = ["document_id", "content_sha256", "metadata"]
    async for record in store.records(collection, filter=first, fields=fields):
        legacy = record.payload.get("metadata") or {}
        sha = record.payload.get("content_sha256") or legacy.get("content_sha256")
        if sha:
            found[str(record.payload["document_id"])] = str(sha)
    return found


async def ingest_corpus(
    dataset: Dataset,
    *,
    collection: str,
    store: VectorStore,
    embedder: Embedder,
    executor: Executor | None,
    options: IngestOptions,
    concurrency: int,
    progress: Progress = _quiet,
) -> IngestStats:
    """Bring the collection in line with the corpus, ingesting only new or changed documents."""
    started = time.perf_counter()
    existing = await ingested_hashes(store, collection)
    todo = [doc for doc in dataset.corpus.values() if existing.get(doc.id) != doc.sha256()]
    gone = [doc_id for doc_id in existing if doc_id not in dataset.corpus]
    stats = IngestStats(documents=len(dataset.corpus), skipped=len(dataset.corpus) - len(todo))
    for doc_id in gone:
        await store.delete_document(collection, doc_id)
    stats.removed = len(gone)
    gate = asyncio.Semaphore(concurrency)
    done = 0
    progress("ingesting", 0, len(todo))

    async def report(stage: str, done: int, total: int) -> None:
        return None

    async def one(doc: Document) -> None:
        nonlocal done
        info = DocumentInfo(
            id=doc.id, collection=collection, filename=doc.filename(),
            content_type=doc.content_type(), content_sha256=doc.sha256(),
            fresh=doc.id not in existing,
        )  # fmt: skip
        async with gate:
            try:
                result = await ingest_document(
                    info, doc.content().encode("utf-8"), store=store, embedder=embedder,
                    executor=executor, options=options, report=report,
                )  # fmt: skip
                stats.ingested += 1
                stats.chunks += result.chunks
            except DocumentFailed as exc:
                stats.failed[doc.id] = f"{exc.reason}: {exc}"
        done += 1
        progress("ingesting", done, len(todo))

    await asyncio.gather(*(one(doc) for doc in todo))
    if todo or gone:
        stats.seconds = time.perf_counter() - started
    stats.points = await store.count(collection) if await store.collection_exists(collection) else 0
    return stats


@dataclass
class QueryOutcome:
    ranking: dict[str, float]
    """Document id → score (max over its chunks), best first, at most top_k."""
    seconds: float
    chunks: int
    error: str | None = None


async def run_queries(
    dataset: Dataset,
    *,
    searcher: Searcher,
    collection: str,
    options: RunOptions,
    progress: Progress = _quiet,
) -> dict[str, QueryOutcome]:
    """Each judged query, one at a time (so that latencies are those of a quiet service)."""
    outcomes: dict[str, QueryOutcome] = {}
    progress("searching", 0, len(dataset.queries))
    for number, (query_id, text) in enumerate(dataset.queries.items(), start=1):
        started = time.perf_counter()
        try:
            results = await searcher.search(
                text, collection=collection, top_k=options.top_k * options.oversample,
                retrieval=options.retrieval,
            )  # fmt: skip
        except InvalidRequest as exc:
            outcomes[query_id] = QueryOutcome({}, time.perf_counter() - started, 0, str(exc))
            progress("searching", number, len(dataset.queries))
            continue
        seconds = time.perf_counter() - started
        best: dict[str, float] = {}
        for result in results:
            if result.score > best.get(result.document_id, float("-inf")):
                best[result.document_id] = result.score
        ranked = sorted(best.items(), key=lambda item: item[1], reverse=True)[: options.top_k]
        outcomes[query_id] = QueryOutcome(dict(ranked), seconds, len(results))
        progress("searching", number, len(dataset.queries))
    return outcomes


@dataclass
class RunResult:
    dataset: Dataset
    options: RunOptions
    collection: str
    model: dict[str, Any]
    ingestion: IngestStats
    outcomes: dict[str, QueryOutcome]
    seconds: float


async def run_evaluation(
    dataset: Dataset,
    *,
    settings: Settings,
    options: RunOptions,
    store: VectorStore,
    upstream: Any,
    model: dict[str, Any],
    executor: Executor | None,
    progress: Progress = _quiet,
) -> RunResult:
    """Ingest (or reuse) the dataset's collection, then search every judged query."""
    started = time.perf_counter()
    embedder: Embedder
    if options.truncate:
        embedder = TruncatingEmbedder(
            upstream, max_tokens=options.embedding_max_tokens,
            batch_size=settings.embedding_batch_size, concurrency=settings.embedding_concurrency,
        )  # fmt: skip
    else:
        embedder = Embedder(
            upstream, batch_size=settings.embedding_batch_size,
            concurrency=settings.embedding_concurrency,
        )  # fmt: skip
    collection = collection_name(dataset, options, model)
    stats = await ingest_corpus(
        dataset, collection=collection, store=store, embedder=embedder, executor=executor,
        options=options.ingest_options(), concurrency=settings.eval_concurrency,
        progress=progress,
    )  # fmt: skip
    searcher = Searcher(store, embedder, max_query_tokens=options.embedding_max_tokens)
    outcomes = await run_queries(
        dataset, searcher=searcher, collection=collection, options=options, progress=progress
    )
    return RunResult(
        dataset, options, collection, model, stats, outcomes, time.perf_counter() - started
    )
