"""Ingestion workers: claim jobs from the registry under a lease, process them, report.

The same code runs as asyncio tasks inside ``rag run`` and as ``rag worker`` processes on other
machines. A worker keeps its lease alive with heartbeats while it works; if it dies, the lease
expires and another worker claims the job again (processing is idempotent). A worker that loses
its lease stops working on that job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from concurrent.futures import Executor

from ingest.blobs import BlobStore
from ingest.pipeline import DocumentFailed, DocumentInfo, IngestOptions, ingest_document
from ingest.registry import JobRecord, Registry
from rag.core.embeddings import Embedder
from rag.core.errors import RagError
from rag.core.vectorstore import VectorStore

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Workers:
    """``concurrency`` job loops sharing a registry, a store and an embedder."""

    def __init__(
        self,
        *,
        registry: Registry,
        blobs: BlobStore,
        store: VectorStore,
        embedder: Embedder,
        options: IngestOptions,
        executor: Executor | None = None,
        concurrency: int = 2,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        progress_interval: float = 1.0,
        owner: str | None = None,
    ) -> None:
        self.registry = registry
        self.blobs = blobs
        self.store = store
        self.embedder = embedder
        self.options = options
        self.executor = executor
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.progress_interval = progress_interval
        self.owner = owner or worker_name()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.processed = 0

    def wake(self) -> None:
        """New work was queued in this process: stop waiting for the next poll."""
        self._wake.set()

    def start(self) -> None:
        for index in range(self.concurrency):
            self._tasks.append(asyncio.create_task(self._loop(f"{self.owner}/{index}")))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _loop(self, owner: str) -> None:
        while True:
            try:
                job = await self.registry.claim_job(owner, self.lease_seconds)
            except RagError as exc:
                log.warning("cannot claim jobs: %s", exc.message)
                job = None
            except Exception:
                log.exception("claiming a job failed")
                job = None
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                continue
            await self.run_job(job, owner)

    async def run_job(self, job: JobRecord, owner: str) -> None:
        work = asyncio.create_task(self._process(job, owner))
        keeper = asyncio.create_task(self._keep_lease(job.id, owner, work))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            if not work.done():  # this worker is stopping: the lease expires, the job is re-run
                work.cancel()
                raise
            log.warning("job %s: lease lost, stopped working on it", job.id)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep_lease(self, job_id: str, owner: str, work: asyncio.Task[None]) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                kept = await self.registry.heartbeat(job_id, owner, self.lease_seconds)
            except Exception as exc:  # a registry hiccup: keep working, try again next beat
                log.warning("job %s: heartbeat failed: %s", job_id, exc)
                continue
            if not kept:
                work.cancel()
                return

    async def _process(self, job: JobRecord, owner: str) -> None:
        registry = self.registry
        document = await registry.get_document(job.document_id)
        if document is None:  # deleted while queued
            await registry.complete_job(job.id, owner)
            return

        written = time.monotonic()  # claiming the job wrote its state

        async def report(stage: str, done: int, total: int) -> None:
            # at most one progress write per interval: a small document is done before the
            # first, and completing the job records its final state anyway
            nonlocal written
            if time.monotonic() - written >= self.progress_interval:
                written = time.monotonic()
                await registry.set_progress(job.id, owner, stage, done, total)

        try:
            data = await self.blobs.read(document.sha256)
            result = await ingest_document(
                DocumentInfo(
                    id=document.id,
                    collection=document.collection,
                    filename=document.filename,
                    content_type=document.content_type,
                    metadata=dict(document.metadata or {}),
                    fresh=job.attempts == 1 and document.chunks is None,
                ),
                data,
                store=self.store,
                embedder=self.embedder,
                executor=self.executor,
                options=self.options,
                report=report,
            )
        except DocumentFailed as exc:
            log.info("job %s: %s failed: %s", job.id, document.filename, exc)
            await registry.fail_job(job.id, owner, exc.reason, str(exc), retryable=False)
            return
        except RagError as exc:
            log.warning("job %s: attempt failed, will retry: %s", job.id, exc.message)
            await registry.fail_job(job.id, owner, exc.type, exc.message, retryable=True)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s: unexpected failure", job.id)
            await registry.fail_job(
                job.id, owner, "internal", f"unexpected {type(exc).__name__}", retryable=True
            )
            return
        await registry.complete_job(job.id, owner, pages=result.pages, chunks=result.chunks)
        self.processed += 1
