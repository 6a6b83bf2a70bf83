"""Retrieval: embed the query through the embedding pool, ask Qdrant for neighbours.

Used by ``POST /v1/search``, by question answering and by the offline evaluation, so that all
three retrieve exactly the same way. The service hands it the query lane's embedder
(``rag/service/components.py``: its own queue, and its own embedding servers where there are
any), so that a search never waits behind ingestion batches.

A document's metadata is kept once, in the registry's row of the document, not in its chunks'
payloads. The searcher reaches it through a :class:`DocumentCatalog` (the service passes the
registry's): a metadata filter becomes the ids of the matching documents, one ``document_id``
condition in the store, and the hits of a page get their metadata in one call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from qdrant_client import models

from rag.core.embeddings import Embedder
from rag.core.errors import InvalidRequest, NotFound
from rag.core.vectorstore import Retrieval, VectorStore

SPECIAL_TOKENS = 2
MAX_METADATA_MATCHES = 1000
"""Default of the most documents a metadata filter may match: their ids go to the store as one
``document_id`` condition (``RAG_METADATA_FILTER_MAX_DOCUMENTS``)."""

MetadataValue = str | int | bool


class DocumentCatalog(Protocol):
    """Where documents' metadata lives (the registry: ``ingest/registry/metadata.py``)."""

    async def matching(
        self,
        collection: str,
        conditions: Mapping[str, MetadataValue],
        *,
        among: Sequence[str] = (),
        limit: int,
    ) -> list[str]:
        """Ids of at most ``limit`` documents of ``collection`` (of ``among``, when given)
        whose metadata meets every condition."""
        ...

    async def metadata_of(self, document_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The metadata of each of these documents that exists, by id."""
        ...


@dataclass(frozen=True)
class SearchFilter:
    document_ids: list[str] = field(default_factory=list)
    filenames: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_qdrant(self) -> models.Filter | None:
        """The store's filter of the payload fields (``metadata`` is resolved beforehand into
        :attr:`document_ids`: the chunks' payloads do not carry it)."""
        if self.metadata:
            raise ValueError("metadata conditions are resolved in the registry, not the store")
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
        documents: DocumentCatalog | None = None,
        max_query_tokens: int = 256,
        score_threshold: float | None = None,
        max_metadata_matches: int = MAX_METADATA_MATCHES,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.documents = documents  # None (evaluation): no metadata filters, hits carry none
        self.max_query_tokens = max_query_tokens
        self.score_threshold = score_threshold
        self.max_metadata_matches = max_metadata_matches

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
        if retrieval != "sparse":
            await self._check_length(query)
        if filter is not None and filter.metadata:
            filter = await self._resolved(collection, filter)
            if filter is None:  # no document matches: nothing to search
                if not await self.store.collection_exists(collection):
                    raise NotFound(f"collection {collection!r} does not exist")
                return []
        vector = None
        if retrieval != "sparse":
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
        ids = list(dict.fromkeys(str(hit.payload.get("document_id")) for hit in hits))
        metadata = await self.documents.metadata_of(ids) if self.documents and ids else {}
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
                # the registry's copy; a point written before it was the one copy may still
                # carry a "metadata" payload, which is not read
                metadata=dict(metadata.get(str(hit.payload.get("document_id"))) or {}),
            )
            for hit in hits
        ]

    async def _check_length(self, query: str) -> None:
        # a token is at least one UTF-8 byte: a query that short needs no /tokenize call
        short = len(query.encode()) + SPECIAL_TOKENS <= self.max_query_tokens
        (length,) = [0] if short else await self.embedder.token_counts([query])
        if length + SPECIAL_TOKENS > self.max_query_tokens:
            raise InvalidRequest(
                f"the query is {length} model tokens long; the limit is "
                f"{self.max_query_tokens - SPECIAL_TOKENS}",
                reason="query_too_long",
            )

    async def _resolved(self, collection: str, filter: SearchFilter) -> SearchFilter | None:
        """``filter`` with its metadata conditions replaced by the ids of the documents that
        meet them (within its ``document_ids``, if any); ``None`` when no document does."""
        if self.documents is None:
            raise InvalidRequest("metadata filters need the document registry")
        for key, value in filter.metadata.items():
            if not isinstance(value, str | int | bool):
                raise InvalidRequest(f"metadata filter {key!r} must be a string, integer or bool")
        ids = await self.documents.matching(
            collection,
            filter.metadata,
            among=filter.document_ids,
            limit=self.max_metadata_matches + 1,
        )
        if len(ids) > self.max_metadata_matches:
            raise InvalidRequest(
                f"the metadata filter matches more than {self.max_metadata_matches} documents; "
                "narrow it (more conditions, or document_id)",
                reason="metadata_filter_too_broad",
            )
        if not ids:
            return None
        return SearchFilter(document_ids=ids, filenames=filter.filenames)
