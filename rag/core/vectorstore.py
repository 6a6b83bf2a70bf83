"""The vector store: Qdrant through ``AsyncQdrantClient``, in local mode or against a server.

One Qdrant collection per service collection (``rag_<name>``) with a named dense vector
(``dense``, size and distance of the embedding model) and a sparse BM25 vector (``sparse``, IDF
applied by Qdrant). Point ids are uuid5(document id, chunk index), so re-processing a document
overwrites its points instead of adding copies. qdrant-client errors are translated here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from rag.core.errors import NotFound, StoreUnavailable
from rag.core.sparse import document_vector, query_vector

DENSE = "dense"
SPARSE = "sparse"
POINT_NAMESPACE = uuid.UUID("6f1c1c3e-8d5e-4c1e-9a57-2b9f0d7e4a10")
INDEXED_FIELDS = {
    "document_id": models.PayloadSchemaType.KEYWORD,
    "filename": models.PayloadSchemaType.KEYWORD,
    "page": models.PayloadSchemaType.INTEGER,
    "chunk_index": models.PayloadSchemaType.INTEGER,
}
Retrieval = Literal["dense", "sparse", "hybrid"]


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


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore:
    def __init__(self, client: AsyncQdrantClient, *, dimensions: int, server: bool = False) -> None:
        self.client = client
        self.dimensions = dimensions
        self.server = server  # payload indexes only exist (and only matter) on a server
        self._known: set[str] = set()

    @classmethod
    def open(
        cls, *, url: str | None, path: str | None, timeout: float, dimensions: int
    ) -> VectorStore:
        if url:
            # no version check: it runs at start-up in a thread and fails while Qdrant is down
            client = AsyncQdrantClient(
                url=url, timeout=int(max(1, timeout)), check_compatibility=False
            )
        else:
            client = AsyncQdrantClient(path=path)
        return cls(client, dimensions=dimensions, server=bool(url))

    async def close(self) -> None:
        await self.client.close()

    async def ping(self) -> None:
        try:
            await self.client.get_collections()
        except Exception as exc:
            raise _translate(exc) from exc

    async def ensure_collection(self, collection: str) -> None:
        name = qdrant_name(collection)
        if name in self._known:
            return
        try:
            if not await self.client.collection_exists(name):
                await self.client.create_collection(
                    name,
                    vectors_config={
                        DENSE: models.VectorParams(
                            size=self.dimensions, distance=models.Distance.COSINE
                        )
                    },
                    sparse_vectors_config={
                        SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                    },
                )
                for field, schema in INDEXED_FIELDS.items() if self.server else ():
                    await self.client.create_payload_index(name, field, field_schema=schema)
        except UnexpectedResponse as exc:
            if exc.status_code != 409:  # created meanwhile by another process
                raise _translate(exc) from exc
        except Exception as exc:
            raise _translate(exc) from exc
        self._known.add(name)

    async def collection_exists(self, collection: str) -> bool:
        try:
            return await self.client.collection_exists(qdrant_name(collection))
        except Exception as exc:
            raise _translate(exc) from exc

    async def upsert(self, collection: str, points: Sequence[ChunkPoint]) -> None:
        structs = []
        for point in points:
            indices, values = document_vector(point.text)
            structs.append(
                models.PointStruct(
                    id=point_id(point.document_id, point.chunk_index),
                    vector={
                        DENSE: point.vector,
                        SPARSE: models.SparseVector(indices=indices, values=values),
                    },
                    payload={
                        **point.payload,
                        "document_id": point.document_id,
                        "chunk_index": point.chunk_index,
                        "text": point.text,
                    },
                )
            )
        try:
            await self.client.upsert(qdrant_name(collection), points=structs, wait=True)
        except Exception as exc:
            raise _translate(exc) from exc

    async def delete_document(
        self, collection: str, document_id: str, *, from_index: int = 0
    ) -> None:
        """Delete the document's points (those with ``chunk_index >= from_index``)."""
        conditions: list[models.Condition] = [
            models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id))
        ]
        if from_index > 0:
            conditions.append(
                models.FieldCondition(key="chunk_index", range=models.Range(gte=from_index))
            )
        try:
            if not await self.client.collection_exists(qdrant_name(collection)):
                return
            await self.client.delete(
                qdrant_name(collection),
                points_selector=models.FilterSelector(filter=models.Filter(must=conditions)),
                wait=True,
            )
        except Exception as exc:
            raise _translate(exc) from exc

    async def count(self, collection: str, document_id: str | None = None) -> int:
        flt = None
        if document_id is not None:
            flt = models.Filter(
                must=[
                    models.FieldCondition(
                        key="document_id", match=models.MatchValue(value=document_id)
                    )
                ]
            )
        try:
            result = await self.client.count(qdrant_name(collection), count_filter=flt, exact=True)
        except Exception as exc:
            raise _translate(exc) from exc
        return result.count

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
        name = qdrant_name(collection)
        indices, values = query_vector(text)
        sparse = models.SparseVector(indices=indices, values=values)
        try:
            if not await self.client.collection_exists(name):
                raise NotFound(f"collection {collection!r} does not exist")
            if retrieval == "dense":
                assert vector is not None
                response = await self.client.query_points(
                    name, query=vector, using=DENSE, limit=top_k, query_filter=filter,
                    score_threshold=score_threshold, with_payload=True,
                )  # fmt: skip
            elif retrieval == "sparse":
                if not indices:
                    return []
                response = await self.client.query_points(
                    name, query=sparse, using=SPARSE, limit=top_k, query_filter=filter,
                    with_payload=True,
                )  # fmt: skip
            else:
                assert vector is not None
                prefetch = [
                    models.Prefetch(query=vector, using=DENSE, limit=top_k * 4, filter=filter),
                ]
                if indices:
                    prefetch.append(
                        models.Prefetch(query=sparse, using=SPARSE, limit=top_k * 4, filter=filter)
                    )
                response = await self.client.query_points(
                    name, prefetch=prefetch, query=models.FusionQuery(fusion=models.Fusion.RRF),
                    limit=top_k, with_payload=True,
                )  # fmt: skip
        except NotFound:
            raise
        except Exception as exc:
            raise _translate(exc) from exc
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, UnexpectedResponse):
        if exc.status_code == 404:
            return NotFound("collection does not exist")
        return StoreUnavailable(f"Qdrant answered HTTP {exc.status_code}", retry_after=2)
    if isinstance(
        exc, ResponseHandlingException | httpx.HTTPError | ConnectionError | TimeoutError
    ):
        return StoreUnavailable("Qdrant is unreachable", retry_after=2)
    return exc
