"""The cost of adding points to a collection that already holds N: the kept stores, in turn.

``bench.store`` times upserts while it loads a collection from empty: one unindexed segment that
grows to N points and is indexed only afterwards. A collection the service holds is indexed (the
store indexes every ``RAG_STORE_INDEX_BATCH`` points written), and what an ingestion into it
pays is the cost of its new points there. This opens each store that ``--keep`` left, as the
service opens it, upserts ``EXTRA`` new points into it (derived as the benchmark's are, from
another seed, in documents of ``CHUNKS_PER_DOCUMENT``) in the benchmark's batches of 256, times
those calls, deletes the points again, and does so ``ROUNDS`` times, the sizes in turn, so that
every size is measured at the same moments of the machine.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.store import data
from bench.store.measure import COLLECTION, UPSERT_BATCH, open_store
from bench.store.sweep import MARKER
from rag.core.store.base import ChunkPoint

EXTRA = 20_480
ROUNDS = 3
CHUNKS_PER_DOCUMENT = 100
SETTLE_SECONDS = 10.0  # after the load: the store reads the payloads ahead meanwhile
SEED = 61


def _batches(vectors: np.ndarray, texts: list[str], prefix: str) -> Iterator[list[ChunkPoint]]:
    for start in range(0, len(texts), UPSERT_BATCH):
        yield [
            data.point(
                f"{prefix}{i // CHUNKS_PER_DOCUMENT}",
                i % CHUNKS_PER_DOCUMENT,
                vectors[i],
                texts[i],
                "appended",
            )
            for i in range(start, min(start + UPSERT_BATCH, len(texts)))
        ]


async def _once(path: Path, vectors: np.ndarray, texts: list[str], prefix: str) -> float:
    """ms a point of ``EXTRA`` upserts into the kept store at ``path``; the points deleted after."""
    store = open_store("edge", path)
    try:
        before = await store.count(COLLECTION)  # the collection loaded
        await asyncio.sleep(SETTLE_SECONDS)
        took = 0.0
        batches = _batches(vectors, texts, prefix)
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            started = time.perf_counter()
            await store.upsert(COLLECTION, batch)
            took += time.perf_counter() - started
        assert await store.count(COLLECTION) == before + len(texts)
        for document in range(-(-len(texts) // CHUNKS_PER_DOCUMENT)):
            await store.delete_document(COLLECTION, f"{prefix}{document}")
        assert await store.count(COLLECTION) == before
    finally:
        await store.close()
    return took / len(texts) * 1000


async def append(stores: list[Path], log: Callable[[str], None]) -> dict[str, Any]:
    base = await data.load(None)
    corpus = data.Corpus(base, len(base.texts) + EXTRA, seed=SEED)  # only its derived points
    parts = list(corpus.derived_batches())
    vectors = np.concatenate([v for v, _ in parts])
    texts = [t for _, made in parts for t in made]
    sizes = {path: int(json.loads((path / MARKER).read_text())["points"]) for path in stores}
    rounds: dict[int, list[float]] = {size: [] for size in sizes.values()}
    for r in range(ROUNDS):
        for path, size in sizes.items():
            ms = await _once(path, vectors, texts, f"appended-{r}-")
            rounds[size].append(round(ms, 4))
            log(f"  round {r + 1}: {EXTRA} points into {size:,}: {ms:.4f} ms/point")
    smallest = min(rounds)
    median = {size: statistics.median(values) for size, values in rounds.items()}
    return {
        "extra_points": EXTRA,
        "rounds": ROUNDS,
        "sizes": {
            str(size): {
                "ms_per_point_rounds": values,
                "ms_per_point": round(median[size], 4),
                "ratio_to_smallest": round(median[size] / median[smallest], 3),
            }
            for size, values in sorted(rounds.items())
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
