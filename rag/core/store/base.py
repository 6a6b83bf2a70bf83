"""What every vector store backend stores and returns, and the interface they implement.

One collection per service collection (``rag_<name>``) with a named dense vector (``dense``,
cosine) and a sparse BM25 vector (``sparse``, IDF applied by the engine). Point ids are
uuid5(document id, chunk index), so re-processing a document overwrites its points instead of
adding copies. Filters are qdrant-client ``models.Filter`` objects on every backend.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qdrant_client import models

POINT_NAMESPACE = uuid.UUID("6f1c1c3e-8d5e-4c1e-9a57-2b9f0d7e4a10")
Retrieval = Literal["dense", "sparse", "hybrid"]
Backend = Literal["edge", "local", "server"]


def point_id(document_id: str, chunk_index: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{document_id}:{chunk_index}"))


def qdrant_name(collection: str) -> str:
    return f"rag_{collection}"


@dataclass(frozen=True)
class ChunkPoint:
    document_id: str
    chunk_index: int
    vector: list[float]
    text: str
    payload: dict[str, Any]

    def stored_payload(self) -> dict[str, Any]:
        return {
            **self.payload,
            "document_id": self.document_id,
            "chunk_index": self.chunk_index,
            "text": self.text,
        }


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Record:
    id: str
    payload: dict[str, Any]
    vector: list[float] | None = None


def document_filter(document_id: str, from_index: int = 0) -> models.Filter:
    must: list[models.Condition] = [
        models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id))
    ]
    if from_index > 0:
        must.append(models.FieldCondition(key="chunk_index", range=models.Range(gte=from_index)))
    return models.Filter(must=must)


class StoreBackend(ABC):
    """The calls a backend answers; every one runs off the caller's event loop or is async I/O."""

    name: Backend

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None: ...

    @abstractmethod
    async def ensure_collection(self, collection: str) -> None: ...

    @abstractmethod
    async def collection_exists(self, collection: str) -> bool: ...

    @abstractmethod
    async def collections(self) -> list[str]:
        """Qdrant names (``rag_...``) of the collections present."""

    @abstractmethod
    async def upsert(self, collection: str, points: Sequence[ChunkPoint]) -> None: ...

    @abstractmethod
    async def delete(self, collection: str, flt: models.Filter) -> None: ...

    @abstractmethod
    async def count(self, collection: str, flt: models.Filter | None) -> int: ...

    @abstractmethod
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
    ) -> list[Hit]: ...

    @abstractmethod
    async def scroll(
        self,
        collection: str,
        *,
        flt: models.Filter | None,
        fields: list[str] | None,
        with_vectors: bool,
        limit: int,
        offset: str | None,
    ) -> tuple[list[Record], str | None]: ...

    @abstractmethod
    async def optimize(self) -> None:
        """Build pending indexes now (a no-op where the engine indexes by itself)."""
