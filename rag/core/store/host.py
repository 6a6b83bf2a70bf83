"""The store process: it owns the Qdrant Edge shards of one data folder and answers calls.

Started by ``EdgeBackend`` as ``python -m rag.core.store.host --fd N --root DIR --dimensions D``
with one end of a socket pair. Qdrant Edge holds the GIL through each call, and through the
whole of ``optimize()`` (building HNSW and sparse indexes), so none of this may run in the
service's process: there it would stop the event loop. Here it stops only this loop, which
answers one call at a time:

- request ``(id, method, kwargs)``, reply ``(id, "ok", result)`` or ``(id, kind, message)`` with
  kind ``not_found``, ``invalid`` or ``error``;
- indexing runs when no call has come for ``--idle`` seconds and points were written since the
  last run, or at once when ``--batch`` points are waiting (a call that arrives meanwhile waits),
  in a thread at nice 10 so that on a busy machine the service's own process runs first;
- a shard is flushed (its segments written out, its write-ahead log cut) once ``FLUSH_POINTS``
  points were written to it since its last flush, and when no call has come for ``--idle``
  seconds: Qdrant Edge never flushes by itself, so its WAL grew with every write until the next
  indexing run (176 MB for 61k points), and a store killed before that run replayed all of it;
- a shard loaded from disk, and one just indexed, has its payloads and sparse vectors read into
  the page cache by a thread at nice 19 (``shards.warm``), so that searches do not wait on the
  disk for them;
- end of input (the service exited) closes the shards and ends the process.

One folder per collection under the root (``rag_<name>``); a shard is opened by one process only
(its WAL is locked), which is why one process owns them all.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from rag.core.store import shards
from rag.core.store.filters import UnsupportedFilter

log = logging.getLogger("rag.store")
MAX_POLL = 86_400.0  # the longest wait poll() takes
INDEXING_NICE = 10
WARM_NICE = 19  # reading ahead is worth only idle CPU time
FLUSH_POINTS = 10_000


class MissingCollection(LookupError):
    pass


class Host:
    def __init__(self, root: Path, dimensions: int, *, flush_points: int = FLUSH_POINTS) -> None:
        self.root = root
        self.dimensions = dimensions
        self.flush_points = flush_points
        self.shards: dict[str, qe.EdgeShard] = {}
        self.dirty: dict[str, int] = {}  # points written since the shard's last indexing run
        self.unflushed: dict[str, int] = {}  # points written or deleted since its last flush
        self.warming: dict[str, threading.Thread] = {}

    def shard(self, name: str, *, create: bool = False) -> qe.EdgeShard:
        if name not in self.shards:
            path = self.root / name
            if not create and not shards.exists(path):
                raise MissingCollection(f"collection {name!r} does not exist")
            existed = shards.exists(path)
            self.shards[name] = shards.open_shard(path, self.dimensions)
            if existed:
                self._warm(name)
        return self.shards[name]

    def _warm(self, name: str) -> None:
        """Read what a search touches and a load leaves on disk into the page cache, in a thread
        (``shards.warm``): one at a time per shard."""
        running = self.warming.get(name)
        if running is not None and running.is_alive():
            return
        path = self.root / name

        def run() -> None:
            # at nice 0 its copies out of the page cache (2.8 GB in 7 s at 1M) kept the service's
            # event loop waiting for a CPU 37-45 ms at a time on 2 cores (bench.store)
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WARM_NICE)
            started = time.perf_counter()
            read = shards.warm(path)
            log.info(
                "%s: %d MB read ahead in %.1f s", name, read >> 20, time.perf_counter() - started
            )

        self.warming[name] = threading.Thread(target=run, name="store-warm", daemon=True)
        self.warming[name].start()

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and shards.exists(p))

    # --- calls ----------------------------------------------------------------------------
    def ping(self) -> None:
        return None

    def collections(self) -> list[str]:
        return self.names()

    def ensure_collection(self, name: str) -> None:
        self.shard(name, create=True)

    def exists(self, name: str) -> bool:
        return name in self.shards or shards.exists(self.root / name)

    def upsert(self, name: str, **kwargs: Any) -> None:
        shards.upsert(self.shard(name, create=True), **kwargs)
        self._wrote(name, len(kwargs["ids"]))

    def upsert_raw(self, name: str, records: list[Any]) -> None:
        shards.upsert_raw(self.shard(name, create=True), records)
        self._wrote(name, len(records))

    def delete(self, name: str, flt: dict[str, Any]) -> None:
        if self.exists(name):
            shards.delete(self.shard(name), flt)
            self.unflushed[name] = self.unflushed.get(name, 0) + 1

    def _wrote(self, name: str, points: int) -> None:
        self.dirty[name] = self.dirty.get(name, 0) + points
        self.unflushed[name] = self.unflushed.get(name, 0) + points

    def count(self, name: str, flt: dict[str, Any] | None) -> int:
        return shards.count(self.shard(name), flt)

    def search(self, name: str, **kwargs: Any) -> list[shards.HitTuple]:
        return shards.search(self.shard(name), **kwargs)

    def scroll(self, name: str, **kwargs: Any) -> shards.Page:
        return shards.scroll(self.shard(name), **kwargs)

    def info(self, name: str) -> dict[str, int]:
        info = self.shard(name).info()
        return {
            "points": info.points_count,
            "segments": info.segments_count,
            "indexed_vectors": info.indexed_vectors_count,
            "pending": self.dirty.get(name, 0),
        }

    def optimize(self, name: str | None = None) -> float:
        """Index what is pending (every dirty shard, or ``name``); the seconds it took."""
        started = time.perf_counter()
        for key in [name] if name else [k for k, v in self.dirty.items() if v]:
            if key in self.shards:
                _in_background(self.shards[key].optimize)
                self._warm(key)  # the segments it wrote
            self.dirty[key] = 0
        return time.perf_counter() - started

    def flush(self, *, due: bool = False) -> int:
        """Flush the shards written since their last flush (with ``due``, only those that passed
        ``flush_points``); how many were flushed."""
        names = [k for k, v in self.unflushed.items() if v and (v >= self.flush_points or not due)]
        for name in names:
            if name in self.shards:
                self.shards[name].flush()
            self.unflushed[name] = 0
        return len(names)

    def waiting(self) -> bool:
        """Whether an idle moment has work: points to index or writes to flush."""
        return any(self.dirty.values()) or any(self.unflushed.values())

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()
        self.shards.clear()


def _in_background(work: Callable[[], object]) -> None:
    """Run ``work`` in a thread at a lower CPU priority and wait for it.

    The indexing threads Qdrant Edge starts inherit that priority, so on a busy machine the OS
    runs the service (its event loop) before them; nothing else runs here meanwhile anyway (the
    call holds the GIL). Lowering the priority is best effort.
    """

    failed: list[BaseException] = []

    def run() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), INDEXING_NICE)
        try:
            work()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="store-indexing")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def serve(conn: Connection, host: Host, *, idle: float, batch: int) -> None:
    while True:
        if not conn.poll(min(idle, MAX_POLL) if host.waiting() else None):
            host.flush()
            if waiting := sum(host.dirty.values()):
                log.info("indexed %d points (idle) in %.1f s", waiting, host.optimize())
            continue
        try:
            request_id, method, kwargs = conn.recv()
        except EOFError:
            break
        if method == "close":
            host.close()
            conn.send((request_id, "ok", None))
            return
        conn.send(_answer(host, request_id, method, kwargs))
        host.flush(due=True)
        if any(v >= batch for v in host.dirty.values()):
            log.info(
                "indexed %d waiting points in %.1f s", sum(host.dirty.values()), host.optimize()
            )
    host.close()


def _answer(host: Host, request_id: int, method: str, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    try:
        return (request_id, "ok", getattr(host, method)(**kwargs))
    except MissingCollection as exc:
        return (request_id, "not_found", str(exc))
    except UnsupportedFilter as exc:
        return (request_id, "invalid", str(exc))
    except Exception as exc:
        log.exception("store call %s failed", method)
        return (request_id, "error", f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rag.core.store.host")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--dimensions", type=int, required=True)
    parser.add_argument("--idle", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--migrate-from", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s store %(levelname)s %(message)s")
    conn = Connection(args.fd)
    try:
        if args.migrate_from is not None and not args.root.exists():
            from rag.core.store.migrate import migrate_local  # qdrant-client: only to migrate

            moved = migrate_local(args.migrate_from, args.root, dimensions=args.dimensions)
            log.info("migrated %s points from %s to %s", moved, args.migrate_from, args.root)
        args.root.mkdir(parents=True, exist_ok=True)
        conn.send((0, "ok", "ready"))
    except Exception as exc:
        log.exception("store start failed")
        conn.send((0, "error", f"{type(exc).__name__}: {exc}"))
        return
    serve(conn, Host(args.root, args.dimensions), idle=args.idle, batch=args.batch)


if __name__ == "__main__":
    main(sys.argv[1:])
