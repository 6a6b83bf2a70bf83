"""Retrieval: embed the query through the embedding pool, ask Qdrant for neighbours.

Used by ``POST /v1/search``, by question answering and by the offline evaluation, so that all
three retrieve exactly the same way. The service hands it the query lane's embedder
(``rag/service/components.py``: its own queue, and its own embedding servers where there are
any), so that a search never waits behind ingestion batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qdrant_client import models

from rag.core.embeddings import Embedder
from rag.core.errors import InvalidRequest
from rag.core.vectorstore import Retrieval, VectorStore

SPECIAL_TOKENS = 2


@dataclass(frozen=True)
class SearchFilter:
    document_ids: list[str] = field(default_factory=list)
    filenames: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_qdrant(self) -> models.Filter | None:
        must: list[models.Condition] = []
        if self.document_ids:
            must.append(
                models.FieldCondition(
                    key="document_id", match=models.MatchAny(any=self.document_ids)
                )
            )
        if self.filenames:
            must.append(
                models.FieldCondition(key="filename", match=models.MatchAny(any=self.filenames))
            )
        for key, value in self.metadata.items():
            if not isinstance(value, str | int | bool):
                raise InvalidRequest(f"metadata filter {key!r} must be a string, integer or bool")
            must.append(
                models.FieldCondition(key=f"metadata.{key}", match=models.MatchValue(value=value))
            )
        return models.Filter(must=must) if must else None


@dataclass(frozen=True)
class Result:
    document_id: str
    chunk_id: str
    chunk_index: int
    score: float
    text: str
    filename: str
    page: int | None
    heading_path: list[str]
    metadata: dict[str, Any]

    def to_api(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "chunk_id": self.chunk_id,
            "chunk_index": self.chunk_index,
            "score": self.score,
            "text": self.text,
            "filename": self.filename,
            "page": self.page,
            "heading_path": self.heading_path,
            "metadata": self.metadata,
        }


class Searcher:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        *,
        max_query_tokens: int = 256,
        score_threshold: float | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.max_query_tokens = max_query_tokens
        self.score_threshold = score_threshold

    async def search(
        self,
        query: str,
        *,
        collection: str,
        top_k: int,
        filter: SearchFilter | None = None,
        retrieval: Retrieval = "dense",
    ) -> list[Result]:
        if not query.strip():
            raise InvalidRequest("the query is empty")
        vector = None
        if retrieval != "sparse":
            # a token is at least one UTF-8 byte: a query that short needs no /tokenize call
            short = len(query.encode()) + SPECIAL_TOKENS <= self.max_query_tokens
            (length,) = [0] if short else await self.embedder.token_counts([query])
            if length + SPECIAL_TOKENS > self.max_query_tokens:
                raise InvalidRequest(
                    f"the query is {length} model tokens long; the limit is "
                    f"{self.max_query_tokens - SPECIAL_TOKENS}",
                    reason="query_too_long",
                )
            (vector,) = await self.embedder.embed([query])
        hits = await self.store.search(
            collection,
            vector=vector,
            text=query,
            top_k=top_k,
            filter=filter.to_qdrant() if filter else None,
            retrieval=retrieval,
            score_threshold=self.score_threshold if retrieval == "dense" else None,
        )
        return [
            Result(
                document_id=str(hit.payload.get("document_id")),
                chunk_id=hit.id,
                chunk_index=int(hit.payload.get("chunk_index", 0)),
                score=hit.score,
                text=str(hit.payload.get("text", "")),
                filename=str(hit.payload.get("filename", "")),
                page=hit.payload.get("page"),
                heading_path=list(hit.payload.get("heading_path") or []),
                metadata=dict(hit.payload.get("metadata") or {}),
            )
            for hit in hits
        ]
