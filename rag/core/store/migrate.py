"""Converting a Qdrant local-mode folder (``data_dir/qdrant``) into Qdrant Edge shards.

Every collection is copied point by point (ids, payloads, dense and sparse vectors as stored, so
nothing is re-embedded or re-weighted) into a new folder beside the target, each count checked
against the source, and the folder renamed onto the target only at the end. An interrupted run
leaves the source as it was and the target absent; the next run removes the half-made folder and
starts again. The source is never changed: delete it once the service runs on the new store.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models

from rag.core.files import fsync_dir
from rag.core.store import shards
from rag.core.store.layout import DENSE

BATCH = 512
MARKER = "MIGRATED.json"
Progress = Callable[[str, int, int], None]


class MigrationError(RuntimeError):
    pass


def _quiet(collection: str, done: int, total: int) -> None:
    return None


def has_local_data(path: Path) -> bool:
    return (path / "collection").is_dir() and any((path / "collection").iterdir())


def staging_path(target: Path) -> Path:
    return target.parent / f".{target.name}.migrating"


def migrate_local(
    source: Path, target: Path, *, dimensions: int, progress: Progress = _quiet
) -> int:
    """Copy every collection of the local-mode folder ``source`` into ``target``; points moved."""
    if target.exists():
        raise MigrationError(f"{target} exists already: nothing to migrate into")
    staging = staging_path(target)
    if staging.exists():  # what an interrupted run left
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    client = QdrantClient(path=str(source))
    counts: dict[str, int] = {}
    try:
        for item in client.get_collections().collections:
            counts[item.name] = _copy(client, item.name, staging / item.name, dimensions, progress)
    finally:
        client.close()
    marker = {"source": str(source.resolve()), "collections": counts, "at": time.time()}
    (staging / MARKER).write_text(json.dumps(marker, indent=2))
    fsync_dir(staging)
    os.rename(staging, target)  # atomic on one file system: the target appears whole or not at all
    fsync_dir(target.parent)
    return sum(counts.values())


def _copy(client: QdrantClient, name: str, path: Path, dimensions: int, progress: Progress) -> int:
    info = client.get_collection(name)
    vectors = info.config.params.vectors
    if isinstance(vectors, dict) and DENSE in vectors:
        dimensions = vectors[DENSE].size
    total = client.count(name, exact=True).count
    shard = shards.open_shard(path, dimensions)
    moved = 0
    offset: Any = None
    try:
        while True:
            points, offset = client.scroll(
                name, limit=BATCH, offset=offset, with_payload=True, with_vectors=True
            )
            shards.upsert_raw(shard, [_record(p) for p in points])
            moved += len(points)
            progress(name, moved, total)
            if offset is None:
                break
        stored = shards.count(shard, None)
        if stored != total:
            raise MigrationError(f"{name}: {total} points in local mode, {stored} copied")
        shard.optimize()  # index now, while nothing is served from it
    finally:
        shard.close()
    return stored


def _record(point: models.Record) -> tuple[str, dict[str, Any], dict[str, Any]]:
    named: dict[str, Any] = {}
    vectors: dict[str, Any] = point.vector if isinstance(point.vector, dict) else {}
    for key, value in vectors.items():
        if isinstance(value, models.SparseVector):
            named[key] = (list(value.indices), list(value.values))
        else:
            named[key] = list(value)
    return str(point.id), dict(point.payload or {}), named
