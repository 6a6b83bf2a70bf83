"""The embedded store's process: it is started on first use, restarted when it dies (the shards
reopen from their write-ahead logs), and refuses what it cannot do with a clear error."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models

from rag.core.errors import InvalidRequest
from rag.core.store import shards
from rag.core.store.edge import UPSERT_PART, EdgeBackend
from rag.core.store.host import Host
from rag.core.vectorstore import ChunkPoint, VectorStore, point_id
from tests.conftest import wait_for

DIM = 8


def _points(n: int) -> list[ChunkPoint]:
    rng = np.random.default_rng(3)
    return [
        ChunkPoint("doc", i, rng.normal(size=DIM).tolist(), f"stone {i}", {"filename": "s.txt"})
        for i in range(n)
    ]


async def test_a_dead_store_process_is_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    store = VectorStore.open(
        url=None, path=str(tmp_path), timeout=30, dimensions=DIM, backend="edge"
    )
    backend = store.backend
    assert isinstance(backend, EdgeBackend)
    try:
        points = _points(50)
        await store.ensure_collection("kept")
        await store.upsert("kept", points)
        process = backend._process
        assert process is not None
        os.kill(process.popen.pid, signal.SIGKILL)  # no flush, no clean close
        process.popen.wait(timeout=30)
        process.reader.join(timeout=30)  # the reader sees the socket close
        assert process.dead is not None
        assert await store.count("kept") == 50  # a new process, the shard reopened from its WAL
        assert backend._process is not process
        hits = await store.search("kept", vector=points[7].vector, text="", top_k=1)
        assert hits[0].id == point_id("doc", 7)
        await store.optimize()
        assert await store.count("kept") == 50
    finally:
        await store.close()


async def test_a_filter_it_cannot_run_is_an_invalid_request(tmp_path: Path) -> None:
    store = VectorStore.open(
        url=None, path=str(tmp_path), timeout=30, dimensions=DIM, backend="edge"
    )
    try:
        await store.ensure_collection("geo")
        await store.upsert("geo", _points(3))
        radius = models.GeoRadius(center=models.GeoPoint(lon=0, lat=0), radius=10)
        flt = models.Filter(must=[models.FieldCondition(key="where", geo_radius=radius)])
        with pytest.raises(InvalidRequest, match="unsupported"):
            await store.search("geo", vector=[0.0] * DIM, text="", top_k=1, filter=flt)
        assert await store.count("geo") == 3  # the store still answers
    finally:
        await store.close()


async def test_a_large_upsert_goes_in_parts_and_vectors_come_back(tmp_path: Path) -> None:
    store = VectorStore.open(
        url=None, path=str(tmp_path), timeout=30, dimensions=DIM, backend="edge"
    )
    try:
        points = _points(2 * UPSERT_PART + 7)  # three messages to the store process
        await store.ensure_collection("big")
        await store.upsert("big", points)
        assert await store.count("big") == len(points)
        back = {r.id: r.vector async for r in store.records("big", with_vectors=True, batch=999)}
        assert len(back) == len(points)
        for point in (points[0], points[UPSERT_PART], points[-1]):
            vector = back[point_id("doc", point.chunk_index)]
            assert isinstance(vector, list) and isinstance(vector[0], float)
            # stored as float32 and normalised for cosine: the same direction
            cosine = np.dot(vector, point.vector) / np.linalg.norm(point.vector)
            assert cosine == pytest.approx(1.0, abs=1e-5)
    finally:
        await store.close()


def test_the_search_breadth_grows_with_the_collection_and_indexing_leaves_a_core() -> None:
    small, large = shards.search_ef(10_000), shards.search_ef(1_000_000)
    assert small >= shards.HNSW_EF_CONSTRUCT
    assert large > small
    assert 1 <= shards.indexing_threads() <= max(1, (os.cpu_count() or 1) - 1)


def _store_processes(root: Path) -> list[int]:
    """Pids of this process's children that run the store of ``root`` (other tests' store
    processes may still run beside it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (
            int(stat[1]) == os.getpid()
            and b"rag.core.store.host" in cmdline
            and str(root).encode() in cmdline
        ):
            found.append(int(entry.name))
    return found


async def test_a_caller_that_gives_up_does_not_abandon_the_start(tmp_path: Path) -> None:
    """A readiness probe times out (2 s) while a loaded machine starts the store process more
    slowly: the start goes on for the next caller, instead of a new process per probe whose
    predecessors died of a closed pipe (the store then never came up)."""
    backend = EdgeBackend(tmp_path, dimensions=DIM, timeout=30)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(backend.ping(), 0.001)  # the process is not up in 1 ms
        # the start goes on (its thread may not have spawned the process yet on a busy machine)
        assert await wait_for(lambda: len(_store_processes(tmp_path)) == 1, within=30)
        started = _store_processes(tmp_path)
        await backend.ping()  # the same start, finished: no second process
        assert backend._process is not None
        assert backend._process.popen.pid == started[0]
        assert _store_processes(tmp_path) == started
    finally:
        await backend.close()


def _wal_bytes(shard: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in (shard / "wal").rglob("*") if f.is_file())


@pytest.mark.parametrize("flush_points", [2_000, 1 << 40])
def test_the_store_flushes_as_it_writes_so_its_log_stays_short(
    tmp_path: Path, flush_points: int
) -> None:
    """Qdrant Edge keeps every write in its WAL until a flush; the store process flushes each
    shard every ``flush_points`` points, as ``serve`` does after each call, so a store killed
    before its next indexing run has little to replay. Without it (the large value) the log
    holds all that was written."""
    host = Host(tmp_path, DIM, flush_points=flush_points)
    rng = np.random.default_rng(5)
    written = 0
    for start in range(0, 32_000, 500):
        ids = [point_id("doc", i) for i in range(start, start + 500)]
        blobs = [{"filename": "s.txt", "blob": f"{i:08d}" * 625} for i in range(500)]  # 5 kB
        host.upsert(
            "rag_c", ids=ids, vectors=rng.normal(size=(500, DIM)).astype(np.float32),
            texts=["stone"] * 500, payloads=blobs,
        )  # fmt: skip
        written += 500 * 5_000
        host.flush(due=True)
    wal = _wal_bytes(tmp_path / "rag_c")
    try:
        if flush_points < 32_000:
            assert wal < written / 2, (wal, written)
            assert host.unflushed["rag_c"] < flush_points
        else:
            assert wal > written, (wal, written)
        assert shards.count(host.shard("rag_c"), None) == 32_000
    finally:
        host.close()


def test_a_loaded_shard_has_its_payloads_read_ahead_when_memory_allows(tmp_path: Path) -> None:
    host = Host(tmp_path, DIM)
    rng = np.random.default_rng(6)
    ids = [point_id("doc", i) for i in range(2_000)]
    host.upsert(
        "rag_c", ids=ids, vectors=rng.normal(size=(2_000, DIM)).astype(np.float32),
        texts=[f"stone {i}" for i in range(2_000)],
        payloads=[{"filename": "s.txt", "text": f"stone {i} " * 50} for i in range(2_000)],
    )  # fmt: skip
    host.optimize("rag_c")
    host.close()
    shard = tmp_path / "rag_c"
    parts = [
        f
        for part in shards.WARM_PARTS
        for d in shard.glob(f"segments/*/{part}")
        for f in d.rglob("*")
        if f.is_file()
    ]
    assert {f.relative_to(shard).parts[2] for f in parts} == set(shards.WARM_PARTS)
    assert shards.warm(shard) == sum(f.stat().st_size for f in parts) > 0
    assert shards.warm(shard, available=1) == 0  # more than a quarter of what is free: left
    reopened = Host(tmp_path, DIM)
    try:
        assert shards.count(reopened.shard("rag_c"), None) == 2_000
        warming = reopened.warming["rag_c"]  # the load started it
        warming.join(timeout=30)
        assert not warming.is_alive()
    finally:
        reopened.close()
