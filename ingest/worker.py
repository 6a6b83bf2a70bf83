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

from ingest.blobs import BlobNotFound, BlobStore
from ingest.parsepool import ParsePool
from ingest.pipeline import DocumentFailed, DocumentInfo, IngestOptions, JobLost, ingest_document
from ingest.registry import DocumentRecord, JobRecord, Registry
from rag.core.embeddings import Account, Embedder, bill_to
from rag.core.errors import RagError
from rag.core.vectorstore import VectorStore

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class _Watch:
    """What the watchdog of one job sees: when its progress last moved, and where."""

    def __init__(self) -> None:
        self.moved_at = time.monotonic()
        self.position: tuple[str, int, int] = ("started", 0, 0)
        self.stalled = False
        self.collection: str | None = None  # of the document, once read

    def saw(self, stage: str, done: int, total: int) -> None:
        if (stage, done, total) != self.position:
            self.position = (stage, done, total)
            self.moved_at = time.monotonic()


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
        executor: Executor | ParsePool | None = None,
        concurrency: int = 2,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        progress_interval: float = 1.0,
        stall_seconds: float = 0.0,
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
        self.stall_seconds = stall_seconds
        self.owner = owner or worker_name()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.processed = 0

    @property
    def parse_pool(self) -> ParsePool | None:
        return self.executor if isinstance(self.executor, ParsePool) else None

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
        watch = _Watch()
        work = asyncio.create_task(self._process(job, owner, watch))
        keeper = asyncio.create_task(self._keep_lease(job.id, owner, work, watch))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            if not work.done():  # this worker is stopping: the lease expires, the job is re-run
                work.cancel()
                raise
            if watch.stalled:
                await self._fail_stalled(job, owner, watch)
            else:
                log.warning("job %s: lease lost, stopped working on it", job.id)
                await self._discard_if_deleted(job.document_id, watch.collection)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep_lease(
        self, job_id: str, owner: str, work: asyncio.Task[None], watch: _Watch
    ) -> None:
        beat = self.lease_seconds / 3
        if self.stall_seconds:
            beat = min(beat, self.stall_seconds / 4)
        lost = False
        while True:
            await asyncio.sleep(beat)
            if self.stall_seconds and time.monotonic() - watch.moved_at > self.stall_seconds:
                watch.stalled = True
                work.cancel()
                return
            if lost:
                continue
            try:
                kept = await self.registry.heartbeat(job_id, owner, self.lease_seconds)
            except Exception as exc:  # a registry hiccup: keep working, try again next beat
                log.warning("job %s: heartbeat failed: %s", job_id, exc)
                continue
            if not kept:
                if watch.position[0] == "embedding":
                    # not in the middle of an upsert: the pipeline's own check after it stops
                    # the job, so no write can land after the clean-up
                    lost = True
                    continue
                work.cancel()
                return

    async def _fail_stalled(self, job: JobRecord, owner: str, watch: _Watch) -> None:
        stage, done, total = watch.position
        where = f"{stage} {done}/{total}" if total else stage
        message = (
            f"no progress for {self.stall_seconds:g} s (stuck at {where}) although the worker "
            "was alive; stopped (RAG_JOB_STALL_SECONDS). Retry the job to try again."
        )
        log.warning("job %s: %s", job.id, message)
        await self.registry.fail_job(job.id, owner, "stalled", message, retryable=False)

    async def _discard_if_deleted(self, document_id: str, collection: str | None) -> None:
        """The job ended without its document: remove the points it may have written after the
        delete removed the others, so that nothing of a deleted document stays searchable."""
        try:
            if await self.registry.get_document(document_id) is not None:
                return  # only the lease was lost: its new owner finishes the document
            if collection is not None:
                await self.store.delete_document(collection, document_id)
                log.info("document %s was deleted while ingested; its chunks removed", document_id)
        except Exception:
            log.exception("removing the chunks of deleted document %s failed", document_id)

    async def _process(self, job: JobRecord, owner: str, watch: _Watch) -> None:
        registry = self.registry
        document = await registry.get_document(job.document_id)
        if document is None:  # deleted while queued
            await registry.complete_job(job.id, owner)
            return
        watch.collection = document.collection
        bill_to(_uploader(document))  # this job's task: its embeddings bill the uploader
        await self._ingest(job, owner, watch, document)

    async def _ingest(
        self, job: JobRecord, owner: str, watch: _Watch, document: DocumentRecord
    ) -> None:
        registry = self.registry
        written = time.monotonic()  # claiming the job wrote its state

        async def report(stage: str, done: int, total: int) -> None:
            # at most one progress write per interval: a small document is done before the
            # first, and completing the job records its final state anyway
            nonlocal written
            watch.saw(stage, done, total)
            if time.monotonic() - written >= self.progress_interval:
                written = time.monotonic()
                await registry.set_progress(job.id, owner, stage, done, total)

        async def still_owned() -> bool:
            try:
                return await registry.heartbeat(job.id, owner, self.lease_seconds)
            except RagError as exc:  # a registry hiccup is not a lost job: the keeper decides
                log.warning("job %s: ownership check failed: %s", job.id, exc.message)
                return True

        try:
            source = self.blobs.path_for(document.sha256)
            if not await self.blobs.exists(document.sha256):
                raise BlobNotFound(f"the stored original of {document.filename} is missing")
            result = await ingest_document(
                DocumentInfo(
                    id=document.id,
                    collection=document.collection,
                    filename=document.filename,
                    content_type=document.content_type,
                    fresh=job.attempts == 1 and document.chunks is None,
                ),
                source,
                store=self.store,
                embedder=self.embedder,
                executor=self.executor,
                options=self.options,
                report=report,
                still_owned=still_owned,
            )
        except JobLost:
            log.info("job %s: %s was deleted (or the job lost) while ingested", job.id, document.id)
            await self._discard_if_deleted(document.id, document.collection)
            return
        except DocumentFailed as exc:
            log.info("job %s: %s failed: %s", job.id, document.filename, exc)
            await registry.fail_job(job.id, owner, exc.reason, str(exc), retryable=False)
            return
        except RagError as exc:
            log.warning("job %s: attempt failed, will retry: %s", job.id, exc.message)
            if await registry.fail_job(job.id, owner, exc.type, exc.message, retryable=True):
                return
            await self._discard_if_deleted(document.id, document.collection)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s: unexpected failure", job.id)
            await registry.fail_job(
                job.id, owner, "internal", f"unexpected {type(exc).__name__}", retryable=True
            )
            return
        done = await registry.complete_job(job.id, owner, pages=result.pages, chunks=result.chunks)
        if done is None:  # deleted (or lost) between the last upsert and now
            await self._discard_if_deleted(document.id, document.collection)
            return
        self.processed += 1


def _uploader(document: DocumentRecord) -> Account | None:
    """Whom the document's embeddings are billed to: the key that uploaded it (none for
    documents uploaded before keys were recorded, or by the service itself)."""
    if document.key_id is None:
        return None
    return Account(document.key_id, document.key_name or "", document.collection)
