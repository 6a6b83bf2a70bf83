"""Recall@10 and latency of one kept store at several HNSW search breadths (``hnsw_ef``).

A store that ``--keep`` left is opened as the service opens it (its store process); the 300
test queries go through that process at each breadth given (0: the store's own choice,
``shards.search_ef`` of the collection's size), dense top-10 and hybrid, and dense recall@10 is
taken against exact search (numpy) on the same points, which are made again from the seed
(``MARKER`` holds how many were made; the documents the benchmark deleted are left out). No
index is rebuilt, so a breadth can be chosen on a million points in minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.store import data
from bench.store.measure import COLLECTION, TOP_K, WARMUP, _ids, _percentiles, exact_top, open_store
from rag.core.store import shards
from rag.core.store.base import qdrant_name
from rag.core.store.edge import EdgeBackend

MARKER = "bench.json"  # in a kept store's folder: how many points were made


async def sweep(index: Path, efs: list[int], log: Callable[[str], None]) -> dict[str, Any]:
    base = await data.load(None)
    store = open_store("edge", index)
    backend = store.backend
    assert isinstance(backend, EdgeBackend)
    try:
        made = int(json.loads((index / MARKER).read_text())["points"])
        points = await store.count(COLLECTION)
        corpus = data.Corpus(base, made)
        log(f"{points} of {made} points in {index}: exact search for 300 queries")
        ids = await asyncio.to_thread(_ids, corpus)
        live = {r.id async for r in store.records(COLLECTION, fields=[])}
        gone = np.asarray([i for pid, i in ids.items() if pid not in live], dtype=np.int64)
        exact = await asyncio.to_thread(exact_top, corpus, base.query_vectors, TOP_K, gone)
        queries = [v.tolist() for v in base.query_vectors]
        default = shards.search_ef(points)
        out: dict[str, Any] = {"points": made, "live_points": points, "index": str(index)}
        out["default_ef"] = default
        out["runs"] = {}

        async def ask(i: int, ef: int, retrieval: str) -> list[Any]:
            hits = await backend.call(
                "search", name=qdrant_name(COLLECTION), vector=queries[i],
                text=base.query_texts[i], top_k=TOP_K, flt=None, retrieval=retrieval,
                score_threshold=None, hnsw_ef=ef or None,
            )  # fmt: skip
            return list(hits)

        for ef in efs:
            row: dict[str, Any] = {"hnsw_ef": ef or default}
            for retrieval in ("dense", "hybrid"):
                for i in range(WARMUP):
                    await ask(i, ef, retrieval)
                seconds, found = [], []
                for i in range(len(queries)):
                    started = time.perf_counter()
                    hits = await ask(i, ef, retrieval)
                    seconds.append(time.perf_counter() - started)
                    if retrieval == "dense":
                        got = {ids[pid] for pid, _, _ in hits}
                        found.append(len(got & set(exact[i])) / TOP_K)
                row[retrieval] = _percentiles(seconds)
                if retrieval == "dense":
                    row["recall_at_10"] = round(float(np.mean(found)), 4)
            out["runs"][str(ef)] = row
            log(f"  ef {ef or 'default'}: {row}")
    finally:
        await store.close()
    out["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return out
