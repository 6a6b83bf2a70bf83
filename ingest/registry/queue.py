"""The durable job queue: jobs are claimed with a lease, kept alive by heartbeats, and retried
with backoff.

A job is runnable when it is ``queued`` and its ``not_before`` has passed, or when it is
``running`` but its lease expired (its worker died) and it has attempts left. :meth:`claim_job`
takes the oldest runnable job; on PostgreSQL with ``SELECT ... FOR UPDATE SKIP LOCKED``, so
claimers never wait for each other, on SQLite inside ``BEGIN IMMEDIATE``, so claims are serial.
Either way a job is handed to one claimer at a time. Every claim counts as an attempt; a job whose
lease expires on its last attempt is failed with an error saying so (see :meth:`_reap_exhausted`)
rather than handed out again.

Lease expiry is judged by the clock of the process that claims, so the machines of a deployment
need clocks that agree to well within a lease (NTP).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from ingest.registry.errors import JobNotFound, JobNotRetryable
from ingest.registry.records import JOB_STATES, JobRecord, JobState
from ingest.registry.store import Clock, Store, utc_now
from ingest.registry.tables import documents, jobs

LEASE_EXPIRED = "lease_expired"


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after the ``attempt``-th failed attempt (1-based).

    The ceiling doubles per attempt, ``min(cap, base * 2 ** (attempt - 1))``; the delay is the
    ceiling's upper half randomised ("equal jitter"): never less than half the ceiling, so retries
    really back off, and spread, so failed jobs do not return in lockstep.
    """
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 62))
    return ceiling / 2 + rand() * ceiling / 2


def _error(error_type: str, message: str) -> dict[str, str]:
    return {"type": error_type, "message": message}


def _owned(job_id: str, owner: str) -> ColumnElement[bool]:
    return and_(jobs.c.id == job_id, jobs.c.state == "running", jobs.c.lease_owner == owner)


class JobQueue(Store):
    """Queue operations on the ``jobs`` table (documents are kept in step with their job)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock = utc_now,
        backoff_base: float = 2.0,
        backoff_cap: float = 300.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(engine, clock=clock)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._rand = rand

    # --- reading ----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
        return JobRecord.from_row(row) if row else None

    async def latest_job_for(self, document_id: str) -> JobRecord | None:
        async with self._read() as conn:
            return await self._latest_job(conn, document_id)

    async def _latest_job(self, conn: AsyncConnection, document_id: str) -> JobRecord | None:
        query = (
            select(jobs)
            .where(jobs.c.document_id == document_id)
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
            .limit(1)
        )
        row = (await conn.execute(query)).mappings().first()
        return JobRecord.from_row(row) if row else None

    async def count_jobs(self, state: JobState | None = None) -> int:
        """Jobs in ``state`` (all jobs with ``None``), for metrics."""
        query = select(func.count()).select_from(jobs)
        if state is not None:
            if state not in JOB_STATES:
                raise ValueError(f"unknown job state {state!r}")
            query = query.where(jobs.c.state == state)
        async with self._read() as conn:
            return int((await conn.execute(query)).scalar_one())

    # --- claiming ---------------------------------------------------------------------------

    async def claim_job(self, owner: str, lease_seconds: float) -> JobRecord | None:
        """Claim the oldest runnable job for ``owner`` for ``lease_seconds``, or ``None``.

        The job becomes ``running`` with ``attempts + 1`` and its document ``processing``. Stage
        and progress start over; the error of an earlier attempt stays until this one ends.
        """
        now = self.now()
        async with self._write() as conn:
            await self._reap_exhausted(conn, now)
            runnable = or_(
                and_(jobs.c.state == "queued", jobs.c.not_before <= now),
                and_(
                    jobs.c.state == "running",
                    jobs.c.lease_expires_at <= now,
                    jobs.c.attempts < jobs.c.max_attempts,
                ),
            )
            pick = (
                select(jobs.c.id, jobs.c.state, jobs.c.lease_owner)
                .where(runnable)
                .order_by(jobs.c.created_at, jobs.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            picked = (await conn.execute(pick)).mappings().first()
            if picked is None:
                return None
            values: dict[str, Any] = {
                "state": "running",
                "stage": "started",
                "progress_done": 0,
                "progress_total": 0,
                "lease_owner": owner,
                "lease_expires_at": now + timedelta(seconds=lease_seconds),
                "attempts": jobs.c.attempts + 1,
                "updated_at": now,
            }
            if picked["state"] == "running":
                values["error"] = _error(
                    LEASE_EXPIRED,
                    f"worker {picked['lease_owner']} stopped renewing its lease; job claimed again",
                )
            row = await self._update_job(conn, jobs.c.id == picked["id"], values)
            assert row is not None
            await self._set_document(conn, row["document_id"], now, status="processing")
            return JobRecord.from_row(row)

    async def _reap_exhausted(self, conn: AsyncConnection, now: datetime) -> None:
        """Fail the jobs whose lease expired on their last attempt: the worker died every time."""
        dead = (
            select(jobs.c.id, jobs.c.document_id, jobs.c.attempts, jobs.c.max_attempts)
            .where(
                jobs.c.state == "running",
                jobs.c.lease_expires_at <= now,
                jobs.c.attempts >= jobs.c.max_attempts,
            )
            .with_for_update(skip_locked=True)
        )
        for job in (await conn.execute(dead)).mappings().all():
            error = _error(
                LEASE_EXPIRED,
                f"the worker stopped renewing its lease (it crashed or hung) on attempt "
                f"{job['attempts']} of {job['max_attempts']}; giving up",
            )
            values = {
                "state": "failed",
                "lease_owner": None,
                "lease_expires_at": None,
                "error": error,
                "updated_at": now,
            }
            await self._update_job(conn, jobs.c.id == job["id"], values)
            await self._set_document(conn, job["document_id"], now, status="failed", error=error)

    # --- the owner's calls ------------------------------------------------------------------

    async def heartbeat(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease by ``lease_seconds`` from now; ``False`` if ``owner`` lost the job."""
        now = self.now()
        values = {"lease_expires_at": now + timedelta(seconds=lease_seconds), "updated_at": now}
        async with self._write() as conn:
            return await self._update_job(conn, _owned(job_id, owner), values) is not None

    async def set_progress(
        self, job_id: str, owner: str, stage: str, done: int, total: int
    ) -> bool:
        """Record the stage and progress; ``False`` if ``owner`` lost the job."""
        values = {
            "stage": stage,
            "progress_done": done,
            "progress_total": total,
            "updated_at": self.now(),
        }
        async with self._write() as conn:
            return await self._update_job(conn, _owned(job_id, owner), values) is not None

    async def complete_job(
        self, job_id: str, owner: str, *, pages: int | None = None, chunks: int | None = None
    ) -> JobRecord | None:
        """Mark the job ``succeeded`` and its document ``ready`` (with ``pages`` and ``chunks``
        when given). ``None`` if ``owner`` lost the job: then nothing changes."""
        now = self.now()
        values: dict[str, Any] = {
            "state": "succeeded",
            "stage": "done",
            "lease_owner": None,
            "lease_expires_at": None,
            "error": None,
            "updated_at": now,
        }
        if chunks is not None:  # progress writes are throttled: the last one may be behind
            values |= {"progress_done": chunks, "progress_total": chunks}
        async with self._write() as conn:
            row = await self._update_job(conn, _owned(job_id, owner), values)
            if row is None:
                return None
            extra = {k: v for k, v in (("pages", pages), ("chunks", chunks)) if v is not None}
            await self._set_document(
                conn, row["document_id"], now, status="ready", error=None, **extra
            )
            return JobRecord.from_row(row)

    async def fail_job(
        self, job_id: str, owner: str, error_type: str, message: str, *, retryable: bool
    ) -> JobRecord | None:
        """End this attempt with an error. With ``retryable`` and attempts left the job goes back
        to ``queued`` after a backoff (``not_before``); otherwise it is ``failed`` and so is its
        document. The error is kept on the job (and the failed document) either way. ``None`` if
        ``owner`` lost the job: then nothing changes."""
        now = self.now()
        error = _error(error_type, message)
        async with self._write() as conn:
            query = select(jobs.c.attempts, jobs.c.max_attempts).where(_owned(job_id, owner))
            current = (await conn.execute(query.with_for_update())).mappings().first()
            if current is None:
                return None
            values: dict[str, Any] = {
                "lease_owner": None,
                "lease_expires_at": None,
                "error": error,
                "updated_at": now,
            }
            if retryable and current["attempts"] < current["max_attempts"]:
                delay = backoff_delay(
                    current["attempts"], self.backoff_base, self.backoff_cap, self._rand
                )
                values |= {
                    "state": "queued",
                    "stage": "retry_wait",
                    "not_before": now + timedelta(seconds=delay),
                }
                doc: dict[str, Any] = {"status": "queued"}
            else:
                values["state"] = "failed"
                doc = {"status": "failed", "error": error}
            row = await self._update_job(conn, jobs.c.id == job_id, values)
            assert row is not None
            await self._set_document(conn, row["document_id"], now, **doc)
            return JobRecord.from_row(row)

    # --- operators --------------------------------------------------------------------------

    async def retry_job(self, job_id: str) -> JobRecord:
        """Requeue a ``failed`` job as a fresh start: attempts back to 0 (so it gets its full
        ``max_attempts`` again), runnable now, error cleared; its document back to ``queued``.

        Raises :class:`JobNotFound`, or :class:`JobNotRetryable` if the job is not failed.
        """
        now = self.now()
        async with self._write() as conn:
            query = select(jobs.c.state).where(jobs.c.id == job_id).with_for_update()
            state = (await conn.execute(query)).scalar_one_or_none()
            if state is None:
                raise JobNotFound(f"no job {job_id}")
            if state != "failed":
                raise JobNotRetryable(f"job {job_id} is {state}; only a failed job can be retried")
            values = {
                "state": "queued",
                "stage": "queued",
                "progress_done": 0,
                "progress_total": 0,
                "attempts": 0,
                "not_before": now,
                "error": None,
                "updated_at": now,
            }
            row = await self._update_job(conn, jobs.c.id == job_id, values)
            assert row is not None
            await self._set_document(conn, row["document_id"], now, status="queued", error=None)
            return JobRecord.from_row(row)

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    async def _update_job(
        conn: AsyncConnection, where: ColumnElement[bool], values: dict[str, Any]
    ) -> RowMapping | None:
        result = await conn.execute(update(jobs).where(where).values(values).returning(*jobs.c))
        return result.mappings().first()

    @staticmethod
    async def _set_document(
        conn: AsyncConnection, document_id: str, now: datetime, **values: Any
    ) -> None:
        stmt = update(documents).where(documents.c.id == document_id)
        await conn.execute(stmt.values(updated_at=now, **values))
