"""What the registry hands out: immutable records of documents and jobs, and their API shape."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

from sqlalchemy.engine import RowMapping

DocumentStatus = Literal["queued", "processing", "ready", "failed"]
JobState = Literal["queued", "running", "succeeded", "failed"]

DOCUMENT_STATUSES: frozenset[str] = frozenset(get_args(DocumentStatus))
JOB_STATES: frozenset[str] = frozenset(get_args(JobState))


def document_id(collection: str, sha256: str) -> str:
    """The deterministic id of a document: the first 32 hex digits of
    ``sha256(f"{collection}\\0{sha256}")``. The same bytes in the same collection always get the
    same id; the same bytes in two collections get two ids."""
    return hashlib.sha256(f"{collection}\0{sha256}".encode()).hexdigest()[:32]


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` suffix, e.g. ``2026-11-22T02:24:39.123456Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _error(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    data = cast(Mapping[str, Any], value)
    return {"type": str(data.get("type", "error")), "message": str(data.get("message", ""))}


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    id: str
    collection: str
    filename: str
    content_type: str
    sha256: str
    size: int
    status: DocumentStatus
    pages: int | None
    chunks: int | None
    metadata: dict[str, Any]
    error: dict[str, str] | None
    created_at: datetime
    updated_at: datetime
    key_id: str | None = None  # the API key that uploaded it, billed for its embeddings
    key_name: str | None = None

    @classmethod
    def from_row(cls, row: RowMapping) -> DocumentRecord:
        return cls(
            id=row["id"],
            collection=row["collection"],
            filename=row["filename"],
            content_type=row["content_type"],
            sha256=row["sha256"],
            size=row["size"],
            status=row["status"],
            pages=row["pages"],
            chunks=row["chunks"],
            metadata=dict(row["metadata"] or {}),
            error=_error(row["error"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            key_id=row["key_id"],
            key_name=row["key_name"],
        )

    def to_api(self) -> dict[str, Any]:
        """The body of ``GET /v1/documents/{id}``."""
        return {
            "id": self.id,
            "collection": self.collection,
            "filename": self.filename,
            "content_type": self.content_type,
            "sha256": self.sha256,
            "status": self.status,
            "pages": self.pages,
            "chunks": self.chunks,
            "metadata": dict(self.metadata),
            "created_at": iso_utc(self.created_at),
            "error": dict(self.error) if self.error else None,
        }


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    document_id: str
    state: JobState
    stage: str
    progress_done: int
    progress_total: int
    attempts: int
    max_attempts: int
    not_before: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    error: dict[str, str] | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> JobRecord:
        return cls(
            id=row["id"],
            document_id=row["document_id"],
            state=row["state"],
            stage=row["stage"],
            progress_done=row["progress_done"],
            progress_total=row["progress_total"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            not_before=row["not_before"],
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
            error=_error(row["error"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def to_api(self) -> dict[str, Any]:
        """The body of ``GET /v1/jobs/{job_id}``."""
        return {
            "id": self.id,
            "document_id": self.document_id,
            "state": self.state,
            "stage": self.stage,
            "progress": {"done": self.progress_done, "total": self.progress_total},
            "attempts": self.attempts,
            "error": dict(self.error) if self.error else None,
        }
