"""One ingestion job, start to end: original bytes → parsed → chunked → measured → embedded →
upserted into Qdrant, with progress in the registry at each stage.

Re-processing a document is idempotent: point ids are derived from the document id and chunk
index, so a second run overwrites the first run's points, and points past the new chunk count are
deleted. Parsing and chunking are CPU-bound and run in a process pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from ingest.chunking import Chunk, ChunkingOptions, chunk_document, split_to_fit
from ingest.parsing import ParseError, parse_document
from ingest.tokens import encoding
from rag.core.embeddings import Embedder
from rag.core.processes import die_with_parent
from rag.core.vectorstore import ChunkPoint, VectorStore

log = logging.getLogger(__name__)

SPECIAL_TOKENS = 2  # [CLS] and [SEP] added by the embedding server around every input
MAX_SPLIT_ROUNDS = 6

Report = Callable[[str, int, int], Awaitable[None]]
"""Called with (stage, done, total) as the job advances."""


@dataclass(frozen=True)
class IngestOptions:
    chunking: ChunkingOptions
    embedding_max_tokens: int = 256  # model tokens per input, special tokens included
    upsert_batch: int = (
        128  # chunks per Qdrant upsert; one group is embedded while another is stored
    )


@dataclass(frozen=True)
class DocumentInfo:
    id: str
    collection: str
    filename: str
    content_type: str
    metadata: dict[str, object]
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


def prepare_parse_process(parent: int) -> None:
    """Initializer of a parsing process started by process ``parent``: die with it, and load
    what parsing needs now (the parsers' modules are imported with this one; the tiktoken
    encoding takes ~0.5 s), so that the first document does not pay for it."""
    die_with_parent(parent)
    encoding()


def parse_and_chunk(
    data: bytes, content_type: str, filename: str, options: ChunkingOptions
) -> tuple[int | None, list[Chunk]]:
    """CPU-bound half of a job; runs in a worker process."""
    parsed = parse_document(data, content_type, filename)
    return parsed.pages, chunk_document(parsed, options)


async def ingest_document(
    document: DocumentInfo,
    data: bytes,
    *,
    store: VectorStore,
    embedder: Embedder,
    executor: Executor | None,
    options: IngestOptions,
    report: Report,
) -> IngestResult:
    loop = asyncio.get_running_loop()
    await report("parsing", 0, 1)
    try:
        pages, chunks = await loop.run_in_executor(
            executor, parse_and_chunk, data, document.content_type, document.filename,
            options.chunking,
        )  # fmt: skip
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
        "metadata": document.metadata,
    }
