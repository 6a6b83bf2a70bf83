"""Qdrant Edge, the embedded default: shards in a store process, called without blocking.

``qdrant-edge-py`` holds the GIL through every call and through the whole of ``optimize()``
(minutes at a million points), so its shards live in a child process (``rag.core.store.host``)
that this class starts on first use and talks to over a socket pair. Sends run in a daemon thread
of their own (a large upsert can fill the socket while the store is busy), replies are read by
another and matched to their calls by id, so the event loop only ever awaits futures; each call
has a timeout. If the store process dies, the calls in flight fail with ``StoreUnavailable`` and
the next call starts a new one, which reopens the shards from their write-ahead logs.

What the calls carry is made and read off the loop too: an upsert's points become arrays and
lists in a worker thread (about 20 µs a point: 0.1 s for 4,096 would stop the loop), and are sent
at most ``UPSERT_PART`` at a time, so that neither pickling one message (the sender holds the GIL
for the whole of it) nor the store's work on it is long; scrolled vectors come back as one
float32 array (unpickling a list of Python floats per point held the GIL 43 ms for 1,024 points)
and become lists in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models

from rag.core.errors import InvalidRequest, NotFound, StoreUnavailable
from rag.core.store.base import (
    Backend,
    ChunkPoint,
    Hit,
    Record,
    Retrieval,
    StoreBackend,
    point_id,
    qdrant_name,
)

log = logging.getLogger(__name__)
OPTIMIZE_WAIT = 3 * 3600.0  # an explicit optimize() indexes everything pending
UPSERT_PART = 1024  # points in one message to the store process


def _upsert_parts(points: Sequence[ChunkPoint]) -> list[dict[str, Any]]:
    """The keyword arguments of the ``upsert`` calls for ``points`` (run in a worker thread)."""
    parts = []
    for start in range(0, len(points), UPSERT_PART):
        part = points[start : start + UPSERT_PART]
        parts.append(
            {
                "ids": [point_id(p.document_id, p.chunk_index) for p in part],
                "vectors": np.asarray([p.vector for p in part], dtype=np.float32),
                "texts": [p.text for p in part],
                "payloads": [p.stored_payload() for p in part],
            }
        )
    return parts


def _records(
    ids: list[str], payloads: list[dict[str, Any]], vectors: np.ndarray | None
) -> list[Record]:
    """Records from a scrolled page (in a worker thread when it has vectors: row by row, so the
    GIL is released between rows)."""
    if vectors is None:
        return [Record(pid, payload) for pid, payload in zip(ids, payloads, strict=True)]
    return [
        Record(pid, payload, row.tolist())
        for pid, payload, row in zip(ids, payloads, vectors, strict=True)
    ]


def _dump(flt: models.Filter | None) -> dict[str, Any] | None:
    return None if flt is None else flt.model_dump(exclude_none=True)


class _Process:
    """One running store process and the thread that reads its replies."""

    def __init__(self, args: list[str]) -> None:
        parent, child = socket.socketpair()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "rag.core.store.host", "--fd", str(child.fileno()), *args],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        child.close()
        self.conn = Connection(os.dup(parent.fileno()))
        parent.close()
        self.pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self.lock = threading.Lock()
        self.dead: str | None = None
        try:
            _, status, message = self.conn.recv()  # migration, if any, happens before this
        except (EOFError, OSError) as exc:
            status, message = "error", f"it exited first ({type(exc).__name__}); see its log"
        if status != "ok":
            self.conn.close()
            self.popen.wait(timeout=30)
            raise StoreUnavailable(f"the store process did not start: {message}", retry_after=5)
        self.reader = threading.Thread(target=self._read, name="store-replies", daemon=True)
        self.reader.start()
        self.outbox: queue.SimpleQueue[tuple[int, str, dict[str, Any]] | None] = queue.SimpleQueue()
        self.sender = threading.Thread(target=self._send, name="store-send", daemon=True)
        self.sender.start()

    def _read(self) -> None:
        while True:
            try:
                request_id, status, result = self.conn.recv()
            except (EOFError, OSError) as exc:
                self._fail_all(f"the store process exited ({type(exc).__name__})")
                return
            with self.lock:
                entry = self.pending.pop(request_id, None)
            if entry is not None:
                loop, future = entry
                loop.call_soon_threadsafe(_settle, future, status, result)

    def _fail_all(self, why: str) -> None:
        with self.lock:
            self.dead = why
            entries = list(self.pending.values())
            self.pending.clear()
        for loop, future in entries:
            loop.call_soon_threadsafe(_settle, future, "unavailable", why)

    def send(self, request_id: int, method: str, kwargs: dict[str, Any]) -> None:
        """Queue a request; the sender thread writes it (a write can wait on a busy store)."""
        self.outbox.put((request_id, method, kwargs))

    def _send(self) -> None:
        while (request := self.outbox.get()) is not None:
            try:
                self.conn.send(request)
            except OSError as exc:
                self._fail_all(f"the store process is gone ({exc})")
                return

    def stop_sending(self) -> None:
        self.outbox.put(None)


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Take a finished start's exception, which its callers may all have stopped awaiting."""
    if not task.cancelled():
        task.exception()


def _settle(future: asyncio.Future[Any], status: str, result: Any) -> None:
    if future.done():
        return
    if status == "ok":
        future.set_result(result)
    elif status == "not_found":
        future.set_exception(NotFound(str(result)))
    elif status == "invalid":
        future.set_exception(InvalidRequest(str(result)))
    else:
        future.set_exception(StoreUnavailable(f"vector store: {result}", retry_after=2))


class EdgeBackend(StoreBackend):
    def __init__(
        self,
        root: Path,
        *,
        dimensions: int,
        timeout: float,
        migrate_from: Path | None = None,
        idle_seconds: float = 2.0,
        batch_points: int = 50_000,
    ) -> None:
        self.name: Backend = "edge"
        self.root = root
        self.dimensions = dimensions
        self.timeout = timeout
        self.migrate_from = migrate_from
        self.idle_seconds = idle_seconds
        self.batch_points = batch_points
        self._ids = itertools.count(1)
        self._process: _Process | None = None
        self._starting: asyncio.Task[_Process] | None = None

    def _args(self) -> list[str]:
        args = [
            "--root", str(self.root), "--dimensions", str(self.dimensions),
            "--idle", str(self.idle_seconds), "--batch", str(self.batch_points),
        ]  # fmt: skip
        if self.migrate_from is not None:
            args += ["--migrate-from", str(self.migrate_from)]
        return args

    async def _ready(self) -> _Process:
        process = self._process
        if process is not None and process.dead is None:
            return process
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(self._start(), name="store-start")
            self._starting.add_done_callback(_retrieved)
        # shielded: a caller that gives up (a readiness probe's 2 s timeout while a loaded
        # machine takes far longer to start the process) leaves the one start running for the
        # next caller. Unshielded, each probe abandoned a half-started process (its pipe closed
        # under it) and started another, and the store never came up.
        return await asyncio.shield(self._starting)

    async def _start(self) -> _Process:
        if self._process is not None and self._process.dead is None:
            return self._process
        if self._process is not None:
            log.warning("restarting the store process: %s", self._process.dead)
            await asyncio.to_thread(_reap, self._process)
        self._process = await asyncio.to_thread(_Process, self._args())
        return self._process

    async def call(self, method: str, wait: float | None = None, **kwargs: Any) -> Any:
        process = await self._ready()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        request_id = next(self._ids)
        with process.lock:
            if process.dead is not None:
                raise StoreUnavailable(process.dead, retry_after=2)
            process.pending[request_id] = (loop, future)
        process.send(request_id, method, kwargs)
        try:
            return await asyncio.wait_for(future, wait or self.timeout)
        except TimeoutError as exc:
            with process.lock:
                process.pending.pop(request_id, None)
            raise StoreUnavailable(
                f"the vector store did not answer {method} within {wait or self.timeout:.0f} s",
                retry_after=5,
            ) from exc

    async def close(self) -> None:
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(StoreUnavailable):
                await self._starting  # a start under way: its process is closed below
        process = self._process
        self._process = None
        if process is not None and process.dead is None:
            with contextlib.suppress(StoreUnavailable):
                await self._close_process(process)
        if process is not None:
            await asyncio.to_thread(_reap, process)

    async def _close_process(self, process: _Process) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        request_id = next(self._ids)
        with process.lock:
            process.pending[request_id] = (loop, future)
        process.send(request_id, "close", {})
        await asyncio.wait_for(future, self.timeout)

    async def ping(self) -> None:
        await self.call("ping")

    async def collections(self) -> list[str]:
        return list(await self.call("collections"))

    async def ensure_collection(self, collection: str) -> None:
        await self.call("ensure_collection", name=qdrant_name(collection))

    async def collection_exists(self, collection: str) -> bool:
        return bool(await self.call("exists", name=qdrant_name(collection)))

    async def upsert(self, collection: str, points: Sequence[ChunkPoint]) -> None:
        if not points:
            return
        for part in await asyncio.to_thread(_upsert_parts, points):
            await self.call("upsert", name=qdrant_name(collection), **part)

    async def delete(self, collection: str, flt: models.Filter) -> None:
        await self.call("delete", name=qdrant_name(collection), flt=_dump(flt))

    async def count(self, collection: str, flt: models.Filter | None) -> int:
        return int(await self.call("count", name=qdrant_name(collection), flt=_dump(flt)))

    async def search(
        self,
        collection: str,
        *,
        vector: list[float] | None,
        text: str,
        top_k: int,
        flt: models.Filter | None,
        retrieval: Retrieval,
        score_threshold: float | None,
    ) -> list[Hit]:
        hits = await self.call(
            "search", name=qdrant_name(collection), vector=vector, text=text, top_k=top_k,
            flt=_dump(flt), retrieval=retrieval, score_threshold=score_threshold,
        )  # fmt: skip
        return [Hit(pid, score, payload) for pid, score, payload in hits]

    async def scroll(
        self,
        collection: str,
        *,
        flt: models.Filter | None,
        fields: list[str] | None,
        with_vectors: bool,
        limit: int,
        offset: str | None,
    ) -> tuple[list[Record], str | None]:
        ids, payloads, vectors, after = await self.call(
            "scroll", name=qdrant_name(collection), flt=_dump(flt), fields=fields,
            with_vectors=with_vectors, limit=limit, offset=offset,
        )  # fmt: skip
        if vectors is None:
            return _records(ids, payloads, None), after
        return await asyncio.to_thread(_records, ids, payloads, vectors), after

    async def optimize(self) -> None:
        await self.call("optimize", wait=OPTIMIZE_WAIT)


def _reap(process: _Process) -> None:
    process.stop_sending()
    try:
        process.popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.popen.kill()
        process.popen.wait(timeout=10)
    process.conn.close()
