"""The sample documents `make run` ingests, through the same path as an upload."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib import resources

from ingest.blobs import BlobStore
from ingest.detect import detect_content_type
from ingest.registry import Registry
from ingest.worker import Workers


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def ingest_samples(
    registry: Registry,
    blobs: BlobStore,
    workers: Workers | None,
    *,
    max_attempts: int,
    collection: str = "default",
) -> int:
    """Queue every bundled sample (identical bytes are recognised and skipped); return count."""
    queued = 0
    for item in sorted(resources.files("rag.samples").iterdir(), key=lambda p: p.name):
        if not item.is_file() or item.name.startswith(("_", ".")):
            continue
        data = item.read_bytes()
        content_type = await asyncio.to_thread(detect_content_type, data, item.name, None)
        sha256, size, _ = await blobs.write_stream(_once(data), len(data) + 1)
        _, _, created = await registry.add_document(
            collection=collection,
            filename=item.name,
            content_type=content_type,
            sha256=sha256,
            size=size,
            metadata={"sample": True},
            max_attempts=max_attempts,
        )
        queued += int(created)
    if workers is not None:
        workers.wake()
    return queued
