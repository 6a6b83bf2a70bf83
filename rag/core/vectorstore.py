"""The vector store the service, ingestion and evaluation use: one interface, three backends.

- ``edge`` (the embedded default): Qdrant Edge shards in ``data_dir/edge``, owned by a store
  process so that indexing never blocks the event loop (``rag.core.store.edge``);
- ``local``: qdrant-client local mode in ``data_dir/qdrant``, for small data (it slows as a
  collection grows: docs/operations.md);
- ``server``: a Qdrant server or cluster at ``qdrant_url``.

Each stores the same points (ids uuid5(document id, chunk index), the same payload, a dense and
a BM25 sparse vector) and answers the same calls with the same results; filters are qdrant-client
``models.Filter`` objects everywhere. tests/store/ runs one behavioural suite against all three.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from qdrant_client import models

from rag.core.settings import Settings
from rag.core.store.base import (
    Backend,
    ChunkPoint,
    Hit,
    Record,
    Retrieval,
    StoreBackend,
    document_filter,
    point_id,
    qdrant_name,
)
from rag.core.store.edge import EdgeBackend
from rag.core.store.layout import DENSE, SPARSE
from rag.core.store.migrate import has_local_data
from rag.core.store.qdrant import QdrantBackend

__all__ = [
    "DENSE", "SPARSE", "Backend", "ChunkPoint", "Hit", "Record", "Retrieval", "VectorStore",
    "backend_of", "point_id", "qdrant_name",
]  # fmt: skip


def backend_of(settings: Settings) -> Backend:
    if settings.vector_store == "auto":
        return "server" if settings.qdrant_url else "edge"
    if settings.vector_store == "server" and not settings.qdrant_url:
        raise ValueError("RAG_VECTOR_STORE=server needs RAG_QDRANT_URL")
    return settings.vector_store


class VectorStore:
    def __init__(self, backend: StoreBackend) -> None:
        self.backend = backend

    @property
    def name(self) -> Backend:
        return self.backend.name

    @classmethod
    def open(
        cls,
        *,
        url: str | None,
        path: str | None,
        timeout: float,
        dimensions: int,
        backend: Backend | None = None,
        migrate_from: str | None = None,
    ) -> VectorStore:
        """A store; nothing is opened until the first call. Without ``backend``: a server when
        ``url`` is given, else local mode at ``path`` (as before there were backends)."""
        backend = backend or ("server" if url else "local")
        if backend == "server":
            if not url:
                raise ValueError("a Qdrant server backend needs a URL")
            return cls(QdrantBackend.server_at(url, timeout=timeout, dimensions=dimensions))
        if path is None:
            raise ValueError(f"the {backend} backend needs a path")
        if backend == "local":
            return cls(QdrantBackend.local_at(path, dimensions=dimensions))
        return cls(
            EdgeBackend(
                Path(path), dimensions=dimensions, timeout=timeout,
                migrate_from=Path(migrate_from) if migrate_from else None,
            )
        )  # fmt: skip

    @classmethod
    def from_settings(
        cls, settings: Settings, *, dimensions: int, data_dir: Path | None = None
    ) -> VectorStore:
        """The store the settings choose, its folders under ``data_dir`` (default: the data dir)."""
        root = data_dir or settings.data_dir
        backend = backend_of(settings)
        if backend == "server":
            return cls.open(url=settings.qdrant_url, path=None, timeout=settings.qdrant_timeout,
                            dimensions=dimensions, backend="server")  # fmt: skip
        if backend == "local":
            return cls.open(url=None, path=str(root / "qdrant"), timeout=settings.qdrant_timeout,
                            dimensions=dimensions, backend="local")  # fmt: skip
        legacy = root / "qdrant"
        migrate = settings.store_migrate and has_local_data(legacy)
        return cls(
            EdgeBackend(
                root / "edge", dimensions=dimensions, timeout=settings.store_timeout,
                migrate_from=legacy if migrate else None, idle_seconds=settings.store_index_idle,
                batch_points=settings.store_index_batch,
            )
        )  # fmt: skip

    async def close(self) -> None:
        await self.backend.close()

    async def ping(self) -> None:
        await self.backend.ping()

    async def ensure_collection(self, collection: str) -> None:
        await self.backend.ensure_collection(collection)

    async def collection_exists(self, collection: str) -> bool:
        return await self.backend.collection_exists(collection)

    async def collections(self) -> list[str]:
        """Qdrant names (``rag_<collection>``) of the collections in the store."""
        return await self.backend.collections()

    async def upsert(self, collection: str, points: Sequence[ChunkPoint]) -> None:
        await self.backend.upsert(collection, points)

    async def delete_document(
        self, collection: str, document_id: str, *, from_index: int = 0
    ) -> None:
        """Delete the document's points (those with ``chunk_index >= from_index``)."""
        await self.backend.delete(collection, document_filter(document_id, from_index))

    async def count(self, collection: str, document_id: str | None = None) -> int:
        flt = None if document_id is None else document_filter(document_id)
        return await self.backend.count(collection, flt)

    async def search(
        self,
        collection: str,
        *,
        vector: list[float] | None,
        text: str,
        top_k: int,
        filter: models.Filter | None = None,
        retrieval: Retrieval = "dense",
        score_threshold: float | None = None,
    ) -> list[Hit]:
        return await self.backend.search(
            collection, vector=vector, text=text, top_k=top_k, flt=filter, retrieval=retrieval,
            score_threshold=score_threshold,
        )  # fmt: skip

    async def scroll(
        self,
        collection: str,
        *,
        filter: models.Filter | None = None,
        fields: list[str] | None = None,
        with_vectors: bool = False,
        limit: int = 1024,
        offset: str | None = None,
    ) -> tuple[list[Record], str | None]:
        """One page of points (payload ``fields`` only, if given); the offset of the next."""
        return await self.backend.scroll(
            collection, flt=filter, fields=fields, with_vectors=with_vectors, limit=limit,
            offset=offset,
        )  # fmt: skip

    async def records(
        self,
        collection: str,
        *,
        filter: models.Filter | None = None,
        fields: list[str] | None = None,
        with_vectors: bool = False,
        batch: int = 1024,
    ) -> AsyncIterator[Record]:
        """Every point (matching ``filter``), page by page."""
        offset: str | None = None
        while True:
            page, offset = await self.scroll(
                collection, filter=filter, fields=fields, with_vectors=with_vectors, limit=batch,
                offset=offset,
            )  # fmt: skip
            for record in page:
                yield record
            if offset is None:
                return

    async def optimize(self) -> None:
        """Build the indexes of points written so far now (the embedded store does it by
        itself when idle; the others index on their own)."""
        await self.backend.optimize()
