"""The Qdrant Edge calls: one shard (a folder) per collection, with the service's layout.

Plain synchronous functions over ``qdrant_edge.EdgeShard``; they hold the GIL (indexing holds it
for its whole run), so only the store process (``host``) and migration call them. The layout,
the payload and the scoring are those of the qdrant-client backends: a named dense vector
(cosine) and a BM25 sparse vector whose IDF the engine applies, keyword indexes on
``document_id`` and ``filename``, integer ones on ``page`` and ``chunk_index``, hybrid search as
RRF (k = 2) of the two candidate lists.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from rag.core.sparse import document_vector, query_vector
from rag.core.store.filters import to_edge
from rag.core.store.layout import (
    DENSE,
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    PREFETCH_FACTOR,
    RRF_K,
    SPARSE,
)

FilterDict = dict[str, Any] | None
# a scrolled page: point ids, payloads, dense vectors (one row a point) or None, the next offset
Page = tuple[list[str], list[dict[str, Any]], np.ndarray | None, str | None]
HitTuple = tuple[str, float, dict[str, Any]]
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
FULL_SCAN_THRESHOLD_KB = 10_000
SEGMENTS = 8
MAX_SEGMENT_KB = 400_000  # about 250k points of 384 dimensions
SEARCH_EF_MIN = HNSW_EF_CONSTRUCT
SEARCH_EF_FROM = 100_000  # points: below this the engine's default breadth is enough
INDEX_MEMORY = qe.Memory.Cached
"""Where the payload indexes and the sparse index live: memory-mapped files read into the page
cache, not structures rebuilt in the process's memory at every load (the engine's default,
``Pinned``). Loading a 60k-point shard took 0.14-0.18 s instead of 0.25-0.35 s (most of it was
the keyword index's hash map and the integer index's B-tree being rebuilt), searches as fast.
Shards made before load as they are (their indexes stay in memory); segments the optimizer
rebuilds in them may take the new placement."""


WARM_PARTS = ("payload_storage", "vector_storage-sparse")
WARM_SHARE = 0.25  # of the memory available: a larger shard is left to be read as it is used
WARM_BUFFER = 1 << 20


def available_memory() -> int | None:
    """Bytes of memory the OS says are available (``MemAvailable``), or None where it does not."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def warm(path: Path, *, available: int | None = None) -> int:
    """Read the parts of the shard at ``path`` that loading it leaves on disk into the page cache;
    the bytes read (0 when they exceed ``WARM_SHARE`` of the available memory).

    A load reads the dense vectors and the HNSW graph into memory (``Memory.Cached``); the
    payloads, which every search returns, and the sparse vectors stay where they are, so each
    search's first touch of a point's payload waited on the disk (150k points, page cache
    dropped: 2,743 reads from disk in the first 300 searches, p50 / p99 2.35 / 6.27 ms, against
    170 reads and 1.76 / 3.34 ms with this run beside them). The reads are plain ``readinto``
    calls, which release the GIL, so the store's calls go on meanwhile.
    """
    files = [
        f for part in WARM_PARTS for d in path.glob(f"segments/*/{part}") for f in d.rglob("*")
    ]
    sizes = {}
    for f in files:
        try:
            if f.is_file():
                sizes[f] = f.stat().st_size
        except OSError:  # a segment the optimizer removed meanwhile
            continue
    budget = available_memory() if available is None else available
    if budget is not None and sum(sizes.values()) > budget * WARM_SHARE:
        return 0
    done = 0
    buffer = bytearray(WARM_BUFFER)
    for f in sorted(sizes):
        try:
            with open(f, "rb", buffering=0) as handle:
                while read := handle.readinto(buffer):
                    done += read
        except OSError:
            continue
    return done


def indexing_threads() -> int:
    """Threads that build an HNSW graph: one core fewer than this process may use, at least one.

    With every core (the engine's default) the build competes with the service's event loop for
    each of them; one core left free keeps the loop's wake-ups prompt while a large index builds.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def config(dimensions: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=dimensions, distance=qe.Distance.Cosine)},
        sparse_vectors={
            SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf, memory=INDEX_MEMORY)
        },
        hnsw_config=qe.HnswIndexConfig(
            m=HNSW_M,
            ef_construct=HNSW_EF_CONSTRUCT,
            full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
            max_indexing_threads=indexing_threads(),
        ),
        optimizers=optimizers(),
    )


def search_ef(points: int) -> int:
    """The HNSW search breadth (``hnsw_ef``) for a collection of ``points``.

    The engine's default is ``ef_construct`` at every size, and recall@10 against exact search
    falls as a graph grows (bench.store: 0.996 at 10k, 0.985 at 100k, 0.90 at 1M with 100). The
    breadth grows with the square root of the collection's size instead, from ``SEARCH_EF_MIN``
    at ``SEARCH_EF_FROM`` points; a search asks for at least its own limit anyway.
    """
    return max(SEARCH_EF_MIN, math.ceil(SEARCH_EF_MIN * math.sqrt(points / SEARCH_EF_FROM)))


def optimizers() -> qe.EdgeOptimizersConfig:
    """Index new points in segments of their own instead of merging them into the big ones.

    The default target of a few segments merges every batch of new points into the indexed
    segment and rebuilds its HNSW graph: measured 14, 38 and 91 s for the same 50k new points
    at 50k, 100k and 150k. Up to ``SEGMENTS`` segments of at most ``MAX_SEGMENT_KB`` each, a run
    indexes what is new, and merges only small segments.
    """
    return qe.EdgeOptimizersConfig(default_segment_number=SEGMENTS, max_segment_size=MAX_SEGMENT_KB)


def exists(path: Path) -> bool:
    return (path / "wal").exists() or (path / "segments").exists()


def open_shard(path: Path, dimensions: int) -> qe.EdgeShard:
    """Load the shard at ``path``, or create it (with its payload indexes) if there is none."""
    if exists(path):  # the optimizer settings of this version, also on shards made before it
        return qe.EdgeShard.load(str(path), config(dimensions))
    path.mkdir(parents=True, exist_ok=True)
    shard = qe.EdgeShard.create(str(path), config(dimensions))
    for field in KEYWORD_FIELDS:
        schema: Any = qe.KeywordIndexParams(enable_hnsw=False, memory=INDEX_MEMORY)
        shard.update(qe.UpdateOperation.create_field_index(field, schema))
    for field in INTEGER_FIELDS:
        schema = qe.IntegerIndexParams(
            lookup=True, range=True, enable_hnsw=False, memory=INDEX_MEMORY
        )
        shard.update(qe.UpdateOperation.create_field_index(field, schema))
    return shard


def upsert(
    shard: qe.EdgeShard,
    ids: list[str],
    vectors: np.ndarray,
    texts: list[str],
    payloads: list[dict[str, Any]],
) -> None:
    """Write points; the sparse vector of each is computed here from its text."""
    points = []
    for pid, vector, text, payload in zip(ids, vectors.tolist(), texts, payloads, strict=True):
        indices, values = document_vector(text)
        named: dict[str, Any] = {DENSE: vector}
        if indices:
            named[SPARSE] = qe.SparseVector(indices=indices, values=values)
        points.append(qe.Point(id=pid, vector=named, payload=payload))
    shard.update(qe.UpdateOperation.upsert_points(points))


def upsert_raw(shard: qe.EdgeShard, records: list[tuple[str, dict[str, Any], Any]]) -> None:
    """Write points whose vectors are already made (``{name: dense list | (indices, values)}``)."""
    points = []
    for pid, payload, named in records:
        vector: dict[str, Any] = {}
        for name, value in named.items():
            if isinstance(value, tuple):
                if value[0]:
                    vector[name] = qe.SparseVector(indices=list(value[0]), values=list(value[1]))
            else:
                vector[name] = list(value)
        points.append(qe.Point(id=pid, vector=vector, payload=payload))
    shard.update(qe.UpdateOperation.upsert_points(points))


def delete(shard: qe.EdgeShard, flt: FilterDict) -> None:
    edge = to_edge(flt)
    if edge is None:
        raise ValueError("a delete needs a filter")
    shard.update(qe.UpdateOperation.delete_points_by_filter(edge))


def count(shard: qe.EdgeShard, flt: FilterDict) -> int:
    return int(shard.count(qe.CountRequest(exact=True, filter=to_edge(flt))))


def search(
    shard: qe.EdgeShard,
    *,
    vector: list[float] | None,
    text: str,
    top_k: int,
    flt: FilterDict,
    retrieval: str,
    score_threshold: float | None,
    exact: bool = False,
    hnsw_ef: int | None = None,
) -> list[HitTuple]:
    """Top ``top_k`` points; dense candidates come from the HNSW graph searched ``hnsw_ef`` wide
    (default: ``search_ef`` of the shard's size), or from every point with ``exact``."""
    edge_filter = to_edge(flt)
    if exact:
        params = qe.SearchParams(exact=True)
    else:
        params = qe.SearchParams(hnsw_ef=hnsw_ef or search_ef(shard.info().points_count))
    indices, values = query_vector(text)
    sparse = qe.SparseVector(indices=indices, values=values)
    if retrieval == "dense":
        assert vector is not None
        request = qe.QueryRequest(
            limit=top_k, query=qe.Query.Nearest(vector, using=DENSE), filter=edge_filter,
            score_threshold=score_threshold, with_payload=True, params=params,
        )  # fmt: skip
    elif retrieval == "sparse":
        if not indices:
            return []
        request = qe.QueryRequest(
            limit=top_k, query=qe.Query.Nearest(sparse, using=SPARSE), filter=edge_filter,
            with_payload=True,
        )  # fmt: skip
    else:
        assert vector is not None
        limit = top_k * PREFETCH_FACTOR
        prefetches = [
            qe.Prefetch(
                limit=limit,
                query=qe.Query.Nearest(vector, using=DENSE),
                filter=edge_filter,
                params=params,
            )
        ]
        if indices:
            prefetches.append(
                qe.Prefetch(
                    limit=limit, query=qe.Query.Nearest(sparse, using=SPARSE), filter=edge_filter
                )
            )
        request = qe.QueryRequest(
            limit=top_k,
            prefetches=prefetches,
            query=qe.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]  # the stub misses Fusion.Rrf
            with_payload=True,
        )
    return [(str(p.id), float(p.score), dict(p.payload or {})) for p in shard.query(request)]


def scroll(
    shard: qe.EdgeShard,
    *,
    flt: FilterDict,
    fields: list[str] | None,
    with_vectors: bool,
    limit: int,
    offset: str | None,
) -> Page:
    """One page: ids, payloads, the dense vectors as one float32 array (or None), next offset."""
    request = qe.ScrollRequest(
        offset=uuid.UUID(offset) if offset else None, limit=limit, filter=to_edge(flt),
        with_payload=qe.PayloadSelector.Include(fields) if fields is not None else True,
        with_vector=[DENSE] if with_vectors else False,
    )  # fmt: skip
    records, after = shard.scroll(request)
    ids = [str(record.id) for record in records]
    payloads = [dict(record.payload or {}) for record in records]
    vectors: np.ndarray | None = None
    if with_vectors:
        rows = [record.vector[DENSE] for record in records if isinstance(record.vector, dict)]
        if len(rows) != len(records):
            raise ValueError("a scrolled point has no dense vector")
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(records), -1)
    return ids, payloads, vectors, None if after is None else str(after)
