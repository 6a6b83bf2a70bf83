"""One backend at one size: upserts, indexing, searches, recall, deletes, reopen, memory, and the
event loop's longest stall in each phase, all through ``VectorStore`` as the service calls it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models

from bench.store.data import Corpus
from rag.core.runtime.paths import EMBEDDING_DIMENSIONS
from rag.core.store.edge import EdgeBackend
from rag.core.vectorstore import Backend, VectorStore, point_id

COLLECTION = "bench"
UPSERT_BATCH = 256
TOP_K = 10
WARMUP = 10
DELETES = 20
FILTER_DOCUMENTS = 5
IDLE_SECONDS = 5.0


REFERENCE = """
import sys, time
out = open(sys.argv[1], "a", buffering=1)
while True:
    before = time.perf_counter()
    time.sleep(0.005)
    late = time.perf_counter() - before - 0.005
    if late > 0.01:
        out.write(f"{time.time()} {late}\\n")
"""


class _Window:
    """A phase's wake-ups of the ``Ticker``, as running figures: the longest (with its split),
    the longest less its run-queue wait, how many of those passed 50 ms, and a histogram of
    lateness in 0.1 ms steps (to 1 s; later ones in its last bucket) for the 99th percentile."""

    STEP = 0.0001
    BUCKETS = 10_001

    def __init__(self) -> None:
        self.count = 0
        self.worst = (0.0, 0.0, 0.0, 0.0)  # seconds late, on a CPU, queued, the machine's steal
        self.own_max = 0.0
        self.own_over_50 = 0
        self.histogram = [0] * self.BUCKETS

    def add(self, late: float, ran: float, queued: float, steal: float) -> None:
        self.count += 1
        if late > self.worst[0]:
            self.worst = (late, ran, queued, steal)
        own = late - queued
        if own > self.own_max:
            self.own_max = own
        if own > 0.05:
            self.own_over_50 += 1
        self.histogram[min(self.BUCKETS - 1, max(0, int(late / self.STEP)))] += 1

    def quantile(self, q: float) -> float:
        """The upper edge of the bucket that holds the ``q`` quantile (0 with no wake-ups)."""
        rank, seen = q * (self.count - 1), 0
        for bucket, n in enumerate(self.histogram):
            seen += n
            if n and seen > rank:
                return min(self.worst[0], (bucket + 1) * self.STEP)
        return 0.0


class Ticker:
    """An asyncio task that wakes every ``interval`` s and records how late each wake-up was.

    On a loaded machine the lateness also holds the time the OS did not run this process at all.
    Three ways to tell that apart: a reference process beside it does nothing but the same
    ticking (``REFERENCE``), and each phase reports the longest stall of both in the same window
    (``machine_max_ms``); the loop's thread reads its own scheduler figures at each wake-up
    (``/proc/thread-self/schedstat``: time on a CPU, time ready to run but waiting on a run
    queue), so each stall splits into the OS's part and the rest (``own_max_ms``: the longest
    stall less the thread's run-queue wait in it, i.e. what ran on the loop, or held the GIL or a
    lock it waited for; ``own_over_50``: how many passed 50 ms); and on a virtual machine, the
    time the hypervisor ran something else on the machine's CPUs (``steal`` in ``/proc/stat``,
    counted in 10 ms ticks) is read with it. ``worst`` splits the longest stall's wake-up window:
    the loop thread on a CPU (the loop's own work), queued, and off the CPU (asleep in its poll,
    or blocked on the GIL, a lock, a page), beside the machine's steal in it. What ran on the
    loop, or held what it waited for, is the service's to answer for.

    Each wake-up only updates running figures (``_Window``), so that ``take()`` costs the loop
    about a millisecond: it used to sort every wake-up of the phase, which after a 14-minute
    phase (168,000 of them) held the loop for 195 ms, a stall counted in the next phase (the
    "indexing" stalls of 55 and 219 ms at 1M were that: the loop thread on a CPU all along).
    """

    def __init__(self, folder: Path, interval: float = 0.005) -> None:
        self.interval = interval
        self.window = _Window()
        self._task: asyncio.Task[None] | None = None
        self._log = folder / "reference-ticker.log"
        self._reference: subprocess.Popen[bytes] | None = None
        self._since = time.time()
        self.gc_worst = 0.0
        self._gc_started = 0.0
        self._schedstat = -1
        self._stat = -1
        self._faults = _major_faults()
        self._pressure = _memory_pressure()
        self._steal = 0.0

    def _sched(self) -> tuple[float, float, float]:
        """Seconds this thread has run and waited on a run queue so far, and the machine's
        steal (zeros where Linux does not say)."""
        ran = waited = steal = 0.0
        if self._schedstat >= 0:
            fields = os.pread(self._schedstat, 128, 0).split()
            ran, waited = int(fields[0]) / 1e9, int(fields[1]) / 1e9
        if self._stat >= 0:  # the first line: cpu user nice system idle iowait irq softirq steal
            steal = int(os.pread(self._stat, 256, 0).split(b"\n", 1)[0].split()[8]) / 100
        return ran, waited, steal

    async def _run(self) -> None:
        while True:
            before, (ran, waited, steal) = time.perf_counter(), self._sched()
            await asyncio.sleep(self.interval)
            late = time.perf_counter() - before - self.interval
            ran_after, waited_after, steal_after = self._sched()
            self.window.add(late, ran_after - ran, waited_after - waited, steal_after - steal)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_worst = max(self.gc_worst, time.perf_counter() - self._gc_started)

    def start(self) -> None:
        gc.callbacks.append(self._gc)  # a collection stops the loop too: say how long
        self._log.parent.mkdir(parents=True, exist_ok=True)
        self._log.touch()
        with contextlib.suppress(OSError):  # the loop's own thread: start() runs on it
            self._schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        with contextlib.suppress(OSError):
            self._stat = os.open("/proc/stat", os.O_RDONLY)
        self._steal = self._sched()[2]
        self._reference = subprocess.Popen([sys.executable, "-c", REFERENCE, str(self._log)])
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _machine_max(self, since: float, until: float) -> float:
        worst = 0.0
        for line in self._log.read_text().splitlines():
            at, late = (float(x) for x in line.split())
            if since <= at <= until:
                worst = max(worst, late)
        return round(worst * 1000, 1)

    async def take(self) -> dict[str, Any]:
        """The longest and the 99th-percentile stall (ms) since the last take, the reference
        process's longest in the same window, and the loop's longest less its run-queue wait."""
        await asyncio.sleep(self.interval * 2)  # let a stall at the very end be seen
        window, self.window = self.window, _Window()
        worst, ran, waited, stolen = window.worst
        steal, self._steal = self._steal, self._sched()[2]
        since, self._since = self._since, time.time()
        gc_worst, self.gc_worst = self.gc_worst, 0.0
        faults, self._faults = self._faults, _major_faults()
        pressure, self._pressure = self._pressure, _memory_pressure()
        return {
            "max_ms": round(worst * 1000, 1),
            "p99_ms": round(window.quantile(0.99) * 1000, 1),
            "machine_max_ms": self._machine_max(since, self._since),
            "own_max_ms": round(window.own_max * 1000, 1),
            "own_over_50": window.own_over_50,
            "gc_max_ms": round(gc_worst * 1000, 1),
            # pages this process had to read back from disk (memory pressure): a loop stall
            # that is neither run-queue wait nor the loop's own work is often one of these
            "major_faults": _major_faults() - faults,
            # the machine's: time some task waited for memory (reclaim, compaction) meanwhile
            # (Linux's pressure stall information), and pages reclaimed by allocating tasks
            "memory_stall_ms": round((self._pressure[0] - pressure[0]) / 1000, 1),
            "direct_reclaim_pages": self._pressure[1] - pressure[1],
            # the longest stall's whole wake-up window (the sleep asked for + how late it
            # came), split (ms): the loop thread on a CPU, on a run queue, and neither (idle
            # in its poll, or blocked: the GIL, a lock, a page); with the machine's steal
            # meanwhile (all CPUs, 10 ms ticks)
            "worst": {
                "window_ms": round((worst + self.interval) * 1000, 1),
                "ran_ms": round(ran * 1000, 1),
                "queued_ms": round(waited * 1000, 1),
                "off_cpu_ms": round(max(0.0, worst + self.interval - ran - waited) * 1000, 1),
                "steal_ms": round(stolen * 1000, 1),
            },
            "steal_ms": round((self._steal - steal) * 1000, 1),  # the machine's, in the phase
        }

    async def stop(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._task is not None:
            self._task.cancel()
        for fd in (self._schedstat, self._stat):
            if fd >= 0:
                os.close(fd)
        self._schedstat = self._stat = -1
        if self._reference is not None:
            self._reference.kill()
            self._reference.wait()


def _memory_pressure() -> tuple[int, int]:
    """(µs some task has stalled on memory, pages scanned by direct reclaim), since boot; zeros
    where Linux does not say."""
    stalled = scanned = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        some = Path("/proc/pressure/memory").read_text().splitlines()[0]
        stalled = int(some.rsplit("total=", 1)[1])
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/vmstat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "pgscan_direct":
                scanned = int(value)
    return stalled, scanned


def _major_faults(pid: int | str = "self") -> int:
    """Pages the process had to read from disk so far (its page faults that did I/O)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[9])


def _rss_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return {
        "rss_mb": out.get("VmRSS", 0.0),
        "peak_rss_mb": out.get("VmHWM", 0.0),
        "anonymous_rss_mb": out.get("RssAnon", 0.0),  # the rest is mapped files (page cache)
    }


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def _timed(calls: list[Callable[[], Awaitable[Any]]]) -> tuple[list[float], list[Any]]:
    seconds, results = [], []
    for call in calls:
        started = time.perf_counter()
        results.append(await call())
        seconds.append(time.perf_counter() - started)
    return seconds, results


def _deleter(store: VectorStore, document_id: str) -> Callable[[], Awaitable[None]]:
    return lambda: store.delete_document(COLLECTION, document_id)


def _ids(corpus: Corpus) -> dict[str, int]:
    return {point_id(corpus.document_id(i), corpus.chunk_index(i)): i for i in range(corpus.size)}


def exact_top(
    corpus: Corpus, queries: np.ndarray, k: int = TOP_K, gone: np.ndarray | None = None
) -> list[list[int]]:
    """The exact top ``k`` of each query (corpus indices), leaving out the indices ``gone``."""
    vectors = corpus.vectors()
    tops = []
    for start in range(0, len(queries), 32):
        scores = queries[start : start + 32] @ vectors.T
        if gone is not None:
            scores[:, gone] = -np.inf
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        for row, cand in zip(scores, part, strict=True):
            tops.append([int(i) for i in cand[np.argsort(-row[cand])]])
    return tops


def open_store(backend: Backend, path: Path) -> VectorStore:
    store = VectorStore.open(
        url=None, path=str(path), timeout=600, dimensions=EMBEDDING_DIMENSIONS, backend=backend
    )
    if isinstance(store.backend, EdgeBackend):  # the benchmark indexes when it says so
        store.backend.idle_seconds = 1e9
        store.backend.batch_points = 1 << 40
    return store


def _store_pid(store: VectorStore) -> int:
    backend = store.backend
    if isinstance(backend, EdgeBackend) and backend._process is not None:
        return backend._process.popen.pid
    return os.getpid()  # local mode lives in this process


async def measure(
    backend: Backend, corpus: Corpus, queries: np.ndarray, texts: list[str], path: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    result: dict[str, Any] = {"backend": backend, "points": corpus.size}
    rss_before = _rss_mb(os.getpid())["rss_mb"]
    ticker = Ticker(path.parent)
    ticker.start()
    await ticker.take()
    await asyncio.sleep(IDLE_SECONDS)
    result["stall_idle"] = await ticker.take()  # nothing but the ticker: the machine's floor
    store = open_store(backend, path)
    try:
        await store.ensure_collection(COLLECTION)
        await ticker.take()
        upsert_s = block_s = 0.0
        blocks: list[list[float]] = []  # [points so far, ms a point in the last 20th]
        block_points = max(UPSERT_BATCH, corpus.size // 20)
        batches = corpus.batches(UPSERT_BATCH)
        n = written = 0
        # the points are made in a thread (the benchmark's own work stays off the loop), and
        # only the upserts are timed
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            started = time.perf_counter()
            await store.upsert(COLLECTION, batch)
            took = time.perf_counter() - started
            upsert_s += took
            block_s += took
            written += len(batch)
            if written % block_points < len(batch) or written == corpus.size:
                done = blocks[-1][0] if blocks else 0
                blocks.append([written, round(block_s / (written - done) * 1000, 4)])
                block_s = 0.0
            if n % 400 == 0:
                log(f"  {backend} upserted {n * UPSERT_BATCH}/{corpus.size}")
            n += 1
        result["upsert_ms_per_point"] = round(upsert_s / corpus.size * 1000, 4)
        result["upsert_seconds"] = round(upsert_s, 1)
        result["upsert_blocks"] = blocks  # how the cost moved as the collection grew
        result["stall_upsert"] = await ticker.take()
        log(f"  {backend} upserts: {result['upsert_ms_per_point']} ms/point")

        started = time.perf_counter()
        await store.optimize()
        index_s = time.perf_counter() - started
        result["index_seconds"] = round(index_s, 1)
        result["index_ms_per_point"] = round(index_s / corpus.size * 1000, 4)
        result["stall_index"] = await ticker.take()
        if isinstance(store.backend, EdgeBackend):
            result["shard"] = await store.backend.call("info", name=f"rag_{COLLECTION}")
        log(f"  {backend} indexing: {result['index_seconds']} s")

        assert await store.count(COLLECTION) == corpus.size
        rng = np.random.default_rng(3)
        real_docs = sorted({corpus.document_id(i) for i in range(corpus.real)})

        def doc_filter() -> models.Filter:
            picked = [str(d) for d in rng.choice(real_docs, size=FILTER_DOCUMENTS, replace=False)]
            match = models.MatchAny(any=picked)
            return models.Filter(must=[models.FieldCondition(key="document_id", match=match)])

        def search(kind: str, i: int) -> Callable[[], Awaitable[Any]]:
            vector = queries[i % len(queries)].tolist()
            text = texts[i % len(texts)]
            flt = doc_filter() if kind == "filtered" else None
            retrieval = "dense" if kind == "filtered" else kind
            return lambda: store.search(
                COLLECTION, vector=vector, text=text, top_k=TOP_K, filter=flt,
                retrieval=retrieval,  # type: ignore[arg-type]
            )  # fmt: skip

        stalls = []
        for kind in ("dense", "filtered", "sparse", "hybrid"):
            await _timed([search(kind, i) for i in range(WARMUP)])
            calls = [search(kind, i) for i in range(len(queries))]
            await ticker.take()  # only the searches themselves
            faults = _major_faults(_store_pid(store))
            seconds, answers = await _timed(calls)
            stalls.append(await ticker.take())
            result[kind] = {**_percentiles(seconds), "stall": stalls[-1]}
            # the store's reads from disk: a search that waits on one is slow for the disk
            result[kind]["store_major_faults"] = _major_faults(_store_pid(store)) - faults
            if kind == "dense":
                dense_answers = answers
            log(f"  {backend} {kind}: {result[kind]}")
        result["stall_search"] = {  # the worst of the four kinds
            key: max(stall[key] for stall in stalls) for key in stalls[0] if key != "worst"
        }
        result["stall_search"]["worst"] = max(stalls, key=lambda s: s["max_ms"])["worst"]

        ids = await asyncio.to_thread(_ids, corpus)
        exact = await asyncio.to_thread(exact_top, corpus, queries)
        found = [
            len({ids[h.id] for h in hits} & set(truth)) / TOP_K
            for hits, truth in zip(dense_answers, exact, strict=True)
        ]
        result["recall_at_10"] = round(float(np.mean(found)), 4)
        log(f"  {backend} recall@10: {result['recall_at_10']}")

        doomed = [str(d) for d in rng.choice(real_docs, size=DELETES, replace=False)]
        await ticker.take()  # not the store's: the exact search above ran in this process
        seconds, _ = await _timed([_deleter(store, d) for d in doomed])
        result["delete_document"] = _percentiles(seconds)
        assert await store.count(COLLECTION, doomed[0]) == 0
        result["stall_delete"] = await ticker.take()
        result["memory"] = _rss_mb(_store_pid(store))
        if backend == "local":
            result["memory"]["rss_mb_added"] = round(result["memory"]["rss_mb"] - rss_before, 1)
    finally:
        await store.close()

    started = time.perf_counter()
    store = open_store(backend, path)
    try:
        # the parts of a reopen: the store ready (the edge store's process started), the
        # collection loaded (its first call), the first search
        await store.backend.ping()
        ready = time.perf_counter()
        faults = _major_faults(_store_pid(store))
        await store.count(COLLECTION)
        loaded = time.perf_counter()
        await store.search(COLLECTION, vector=queries[0].tolist(), text="", top_k=TOP_K)
        result["reopen_seconds"] = round(time.perf_counter() - started, 2)
        result["reopen_parts"] = {
            "ready_s": round(ready - started, 2),
            "load_s": round(loaded - ready, 2),
            "first_search_s": round(time.perf_counter() - loaded, 3),
            "store_major_faults": _major_faults(_store_pid(store)) - faults,
        }
        result["stall_reopen"] = await ticker.take()
        result["memory_after_reopen"] = _rss_mb(_store_pid(store))
    finally:
        await store.close()
        await ticker.stop()
    log(f"  {backend} reopen: {result['reopen_seconds']} s")
    return result
