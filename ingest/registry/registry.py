"""The registry of documents: what was uploaded, where its processing stands, and its job.

One code path for SQLite (the embedded default) and PostgreSQL (many API replicas and workers).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from sqlalchemy import Table, and_, delete, false, insert, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from ingest.registry.engine import create_registry_engine
from ingest.registry.errors import InvalidCursor, RegistryUnavailable
from ingest.registry.migrate import migrate as run_migrations
from ingest.registry.queue import JobQueue
from ingest.registry.records import (
    DOCUMENT_STATUSES,
    DocumentRecord,
    DocumentStatus,
    JobRecord,
    document_id,
)
from ingest.registry.store import Clock, utc_now
from ingest.registry.tables import documents, jobs
from rag.core.errors import InvalidRequest

MAX_PAGE = 1000


class _Unset(Enum):
    UNSET = "unset"


UNSET: Literal[_Unset.UNSET] = _Unset.UNSET


def encode_cursor(created_at: datetime, doc_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), doc_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, doc_id = json.loads(raw)
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is None or not isinstance(doc_id, str):
            raise ValueError("not a registry cursor")
    except (binascii.Error, ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidCursor("invalid cursor: pass back the next_cursor of a listing") from exc
    return moment, doc_id


class Registry(JobQueue):
    """Documents and their ingestion jobs (the queue operations come from :class:`JobQueue`).

    Build it on an engine from :func:`create_registry_engine` (then the caller disposes of the
    engine), or with ``await Registry.connect(url)`` (then :meth:`close` disposes of it).
    """

    ping_timeout: float = 2.0

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock = utc_now,
        backoff_base: float = 2.0,
        backoff_cap: float = 300.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(
            engine, clock=clock, backoff_base=backoff_base, backoff_cap=backoff_cap, rand=rand
        )
        self._owns_engine = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        schema: str | None = None,
        migrate: bool = True,
        clock: Clock = utc_now,
        backoff_base: float = 2.0,
        backoff_cap: float = 300.0,
    ) -> Registry:
        """Open the registry at ``url``, first migrating it to the newest schema (``migrate``)."""
        engine = create_registry_engine(url, schema=schema)
        try:
            if migrate:
                await run_migrations(engine, schema=schema)
        except BaseException:
            await engine.dispose()
            raise
        registry = cls(engine, clock=clock, backoff_base=backoff_base, backoff_cap=backoff_cap)
        registry._owns_engine = True
        return registry

    async def close(self) -> None:
        if self._owns_engine:
            await self.engine.dispose()

    async def ping(self) -> None:
        """Check that the database answers within :attr:`ping_timeout` seconds (readiness);
        raises :class:`RegistryUnavailable` if not."""
        try:
            async with asyncio.timeout(self.ping_timeout), self._read() as conn:
                await conn.execute(select(1))
        except TimeoutError as exc:
            raise RegistryUnavailable(
                f"the registry database did not answer within {self.ping_timeout} s"
            ) from exc

    # --- documents --------------------------------------------------------------------------

    async def add_document(
        self,
        collection: str,
        filename: str,
        content_type: str,
        sha256: str,
        size: int,
        metadata: dict[str, Any] | None = None,
        max_attempts: int = 3,
        key_id: str | None = None,
        key_name: str | None = None,
    ) -> tuple[DocumentRecord, JobRecord | None, bool]:
        """Register an upload and queue its job, atomically: ``(document, job, True)``.

        If these bytes (``sha256``) are already in ``collection`` nothing is added and the answer
        is ``(existing document, its latest job, False)`` whatever its status; a failed one is
        retried with :meth:`retry_job`. Concurrent identical uploads make one document.
        ``key_id``, ``key_name``: the API key that uploads it, billed for its embeddings.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        doc_id = document_id(collection, sha256)
        for _ in range(3):
            existing = await self._existing(doc_id)
            if existing is not None:
                return existing[0], existing[1], False
            try:
                async with self._write() as conn:
                    if (found := await self._existing(doc_id, conn)) is not None:
                        return found[0], found[1], False
                    now = self.now()
                    doc_values = {
                        "id": doc_id,
                        "collection": collection,
                        "filename": filename,
                        "content_type": content_type,
                        "sha256": sha256,
                        "size": size,
                        "status": "queued",
                        "metadata": dict(metadata or {}),
                        "created_at": now,
                        "updated_at": now,
                        "key_id": key_id,
                        "key_name": key_name,
                    }
                    doc_row = await _insert(conn, documents, doc_values)
                    job_values = {
                        "id": uuid.uuid4().hex,
                        "document_id": doc_id,
                        "state": "queued",
                        "stage": "queued",
                        "progress_done": 0,
                        "progress_total": 0,
                        "attempts": 0,
                        "max_attempts": max_attempts,
                        "not_before": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                    job_row = await _insert(conn, jobs, job_values)
                    return DocumentRecord.from_row(doc_row), JobRecord.from_row(job_row), True
            except IntegrityError:
                continue  # a concurrent upload of the same bytes won: read what it made
        raise RegistryUnavailable("could not register the document: it kept changing; retry")

    async def _existing(
        self, doc_id: str, conn: AsyncConnection | None = None
    ) -> tuple[DocumentRecord, JobRecord | None] | None:
        if conn is None:
            async with self._read() as own:
                return await self._existing(doc_id, own)
        row = (
            (await conn.execute(select(documents).where(documents.c.id == doc_id)))
            .mappings()
            .first()
        )
        if row is None:
            return None
        return DocumentRecord.from_row(row), await self._latest_job(conn, doc_id)

    async def get_document(self, doc_id: str) -> DocumentRecord | None:
        async with self._read() as conn:
            query = select(documents).where(documents.c.id == doc_id)
            row = (await conn.execute(query)).mappings().first()
        return DocumentRecord.from_row(row) if row else None

    async def list_documents(
        self,
        collection: str | None = None,
        status: DocumentStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
        within: Sequence[str] | None = None,
    ) -> tuple[list[DocumentRecord], str | None]:
        """A page of documents, oldest first (by ``created_at``, then ``id``), and the opaque
        cursor of the next page (``None`` on the last page). ``within``: only collections that
        match one of these patterns (names, ``prefix*``, ``*``; an API key's collections)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}")
        if status is not None and status not in DOCUMENT_STATUSES:
            raise InvalidRequest(f"unknown status {status!r}: one of {sorted(DOCUMENT_STATUSES)}")
        query = select(documents).order_by(documents.c.created_at, documents.c.id)
        if collection is not None:
            query = query.where(documents.c.collection == collection)
        if status is not None:
            query = query.where(documents.c.status == status)
        if within is not None and "*" not in within:
            names = [p for p in within if not p.endswith("*")]
            matches: list[ColumnElement[bool]] = []
            if names:
                matches.append(documents.c.collection.in_(names))
            matches += [
                documents.c.collection.startswith(p[:-1], autoescape=True)
                for p in within
                if p.endswith("*")
            ]
            query = query.where(or_(*matches) if matches else false())
        if cursor is not None:
            after, after_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    documents.c.created_at > after,
                    and_(documents.c.created_at == after, documents.c.id > after_id),
                )
            )
        async with self._read() as conn:
            rows = (await conn.execute(query.limit(limit + 1))).mappings().all()
        page = [DocumentRecord.from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return page, encode_cursor(page[-1].created_at, page[-1].id) if more else None

    async def update_document(
        self,
        doc_id: str,
        *,
        status: DocumentStatus | _Unset = UNSET,
        pages: int | _Unset | None = UNSET,
        chunks: int | _Unset | None = UNSET,
        error: dict[str, str] | _Unset | None = UNSET,
    ) -> DocumentRecord | None:
        """Set the given fields; ``None`` if there is no such document."""
        values: dict[str, Any] = {"updated_at": self.now()}
        if status is not UNSET:
            if status not in DOCUMENT_STATUSES:
                raise ValueError(f"unknown document status {status!r}")
            values["status"] = status
        if pages is not UNSET:
            values["pages"] = pages
        if chunks is not UNSET:
            values["chunks"] = chunks
        if error is not UNSET:
            values["error"] = (
                None
                if error is None
                else {"type": str(error["type"]), "message": str(error["message"])}
            )
        async with self._write() as conn:
            stmt = update(documents).where(documents.c.id == doc_id).values(values)
            row = (await conn.execute(stmt.returning(*documents.c))).mappings().first()
        return DocumentRecord.from_row(row) if row else None

    async def delete_document(self, doc_id: str) -> DocumentRecord | None:
        """Delete the document and its jobs; the deleted record, or ``None`` if there was none.

        The caller removes its chunks and, unless :meth:`sha256_in_use`, its original bytes.
        """
        async with self._write() as conn:
            await conn.execute(delete(jobs).where(jobs.c.document_id == doc_id))
            stmt = delete(documents).where(documents.c.id == doc_id).returning(*documents.c)
            row = (await conn.execute(stmt)).mappings().first()
        return DocumentRecord.from_row(row) if row else None

    async def sha256_in_use(self, sha256: str) -> bool:
        """Whether any document (in any collection) still has these bytes."""
        async with self._read() as conn:
            query = select(documents.c.id).where(documents.c.sha256 == sha256).limit(1)
            return (await conn.execute(query)).first() is not None


async def _insert(conn: AsyncConnection, table: Table, values: dict[str, Any]) -> RowMapping:
    result = await conn.execute(insert(table).values(values).returning(*table.c))
    return result.mappings().one()
