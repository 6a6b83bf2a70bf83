"""One ingestion job, start to end: original bytes → parsed → chunked → measured → embedded →
upserted into Qdrant, with progress in the registry at each stage.

Re-processing a document is idempotent: point ids are derived from the document id and chunk
index, so a second run overwrites the first run's points, and points past the new chunk count are
deleted. Parsing and chunking are CPU-bound and run in a process pool: the supervised
:class:`ingest.parsepool.ParsePool` of the service and workers (a deadline per document, a memory
limit per process), or any ``concurrent.futures`` executor (evaluations, tests).

A job whose document is deleted while it runs learns it from ``still_owned`` after each upsert
and stops with :class:`JobLost`; the worker then removes what it had written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ingest.chunking import Chunk, ChunkingOptions, chunk_document, split_to_fit
from ingest.parsepool import ParseDeadline, ParseOutOfMemory, ParsePool
from ingest.parsing import ParseError, ParseLimits, parse_document
from ingest.tokens import encoding
from rag.core.embeddings import Embedder
from rag.core.processes import die_with_parent
from rag.core.vectorstore import ChunkPoint, VectorStore

log = logging.getLogger(__name__)

SPECIAL_TOKENS = 2  # [CLS] and [SEP] added by the embedding server around every input
MAX_SPLIT_ROUNDS = 6

Report = Callable[[str, int, int], Awaitable[None]]
"""Called with (stage, done, total) as the job advances."""
StillOwned = Callable[[], Awaitable[bool]]
"""Whether the job still belongs to this worker (its document not deleted, its lease kept)."""
Source = bytes | Path
"""A document's bytes, or the path of its stored original (read by the parse process)."""


@dataclass(frozen=True)
class IngestOptions:
    chunking: ChunkingOptions
    embedding_max_tokens: int = 256  # model tokens per input, special tokens included
    upsert_batch: int = (
        128  # chunks per Qdrant upsert; one group is embedded while another is stored
    )
    limits: ParseLimits = field(default_factory=ParseLimits)
    parse_timeout: float = 300.0  # seconds one document may take to parse and chunk
    memory_limit_mb: int | None = None  # of a parse process (for the message of too_large)


@dataclass(frozen=True)
class DocumentInfo:
    id: str
    collection: str
    filename: str
    content_type: str
    # The document's metadata is not here: the registry keeps it once per document, and the
    # searcher reads it from there (rag/core/search.py), so no chunk carries a copy of it.
    # Evaluation, which has no registry, keeps its content hash in every chunk's payload.
    content_sha256: str | None = None
    # First attempt at a document never indexed before: no stale points can exist, so the
    # filtered delete (a scan of every point in Qdrant local mode) is skipped.
    fresh: bool = False


@dataclass(frozen=True)
class IngestResult:
    pages: int | None
    chunks: int


class DocumentFailed(Exception):
    """The document itself cannot be ingested (retrying will not help)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class JobLost(Exception):
    """The job stopped belonging to this worker while it ran (its document was deleted, or its
    lease went to another worker): stop writing."""


def prepare_parse_process(parent: int) -> None:
    """Initializer of a parsing process started by process ``parent``: die with it, and load
    what parsing needs now (the parsers' modules are imported with this one; the tiktoken
    encoding takes ~0.5 s), so that the first document does not pay for it."""
    die_with_parent(parent)
    encoding()


def parse_and_chunk(
    source: Source,
    content_type: str,
    filename: str,
    options: ChunkingOptions,
    limits: ParseLimits | None = None,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[int | None, list[Chunk]]:
    """CPU-bound half of a job; runs in a parse process. A path is read there, so the bytes of
    a document never pass through the process that schedules the jobs."""
    data = source.read_bytes() if isinstance(source, Path) else source
    parsed = parse_document(data, content_type, filename, limits or ParseLimits(), progress)
    return parsed.pages, chunk_document(parsed, options)


async def _parse(
    document: DocumentInfo,
    source: Source,
    executor: Executor | ParsePool | None,
    options: IngestOptions,
    report: Report,
) -> tuple[int | None, list[Chunk]]:
    args = (source, document.content_type, document.filename, options.chunking, options.limits)
    if not isinstance(executor, ParsePool):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, partial(parse_and_chunk, *args))

    async def progress(stage: str, done: int, total: int) -> None:
        await report(stage, done, total)  # "ocr": pages recognised so far, of those without text

    try:
        pages, chunks = await executor.run(
            parse_and_chunk, *args, timeout=options.parse_timeout, progress=progress,
            describe=document.filename,
        )  # fmt: skip
    except ParseDeadline as exc:
        raise DocumentFailed("timeout", f"{exc}: the limit is RAG_PARSE_TIMEOUT_SECONDS") from exc
    except ParseOutOfMemory as exc:
        limit = f" of {options.memory_limit_mb} MiB" if options.memory_limit_mb else ""
        raise DocumentFailed(
            "too_large",
            f"{document.filename} needs more memory to parse than the limit{limit} per parse "
            "process (RAG_PARSE_MEMORY_MB)",
        ) from exc
    return pages, chunks


async def ingest_document(
    document: DocumentInfo,
    data: Source,
    *,
    store: VectorStore,
    embedder: Embedder,
    executor: Executor | ParsePool | None,
    options: IngestOptions,
    report: Report,
    still_owned: StillOwned | None = None,
) -> IngestResult:
    await report("parsing", 0, 1)
    try:
        pages, chunks = await _parse(document, data, executor, options, report)
    except ParseError as exc:
        raise DocumentFailed(exc.reason, str(exc)) from exc
    if not chunks:
        raise DocumentFailed("no_text", f"{document.filename} contains no text to index")

    await report("measuring", 0, len(chunks))
    chunks = await fit_to_model(chunks, embedder, options.embedding_max_tokens - SPECIAL_TOKENS)

    await store.ensure_collection(document.collection)
    total = len(chunks)
    await report("embedding", 0, total)
    groups = [chunks[i : i + options.upsert_batch] for i in range(0, total, options.upsert_batch)]
    done = 0
    # Embed group i+1 while group i is upserted, so the embedding slots never wait on Qdrant.
    pending = asyncio.ensure_future(embedder.embed([c.text for c in groups[0]]))
    try:
        for index, group in enumerate(groups):
            vectors = await pending
            if index + 1 < len(groups):
                pending = asyncio.ensure_future(embedder.embed([c.text for c in groups[index + 1]]))
            await store.upsert(
                document.collection,
                [
                    ChunkPoint(
                        document_id=document.id,
                        chunk_index=chunk.index,
                        vector=vector,
                        text=chunk.text,
                        payload=_payload(document, chunk),
                    )
                    for chunk, vector in zip(group, vectors, strict=True)
                ],
            )
            done += len(group)
            if still_owned is not None and not await still_owned():
                raise JobLost(f"{document.filename}: the job was taken away while it ran")
            await report("embedding", done, total)
    finally:
        if not pending.done():
            pending.cancel()
    if not document.fresh:
        await store.delete_document(document.collection, document.id, from_index=total)
    return IngestResult(pages=pages, chunks=total)


async def fit_to_model(chunks: list[Chunk], embedder: Embedder, limit: int) -> list[Chunk]:
    """Split chunks until the embedding model's own tokenizer says every one fits ``limit``."""
    for _ in range(MAX_SPLIT_ROUNDS):
        lengths = await embedder.token_counts([chunk.text for chunk in chunks])
        if max(lengths) <= limit:
            return chunks
        chunks = await asyncio.to_thread(split_to_fit, chunks, lengths, limit)
    raise DocumentFailed("too_long", "a chunk cannot be split to fit the embedding model")


def _payload(document: DocumentInfo, chunk: Chunk) -> dict[str, object]:
    return {
        "collection": document.collection,
        "filename": document.filename,
        "content_type": document.content_type,
        "page": chunk.page,
        "heading_path": list(chunk.heading_path),
        "char_start": chunk.char_start,
        "char_end": chunk.char_end,
        **({"content_sha256": document.content_sha256} if document.content_sha256 else {}),
    }
