"""``POST /v1/search``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from rag.api.auth import KEYED_ERRORS, ReadKey, hidden_collection, usable_collection
from rag.api.deps import RecorderDep, SearcherDep, SettingsDep
from rag.core.embeddings import Account, bill_to
from rag.core.errors import NotFound
from rag.core.search import SearchFilter
from rag.core.vectorstore import Retrieval
from rag.web.error_schema import error_responses

router = APIRouter(tags=["retrieval"], responses=KEYED_ERRORS)


MAX_FILTER_VALUES = 100
"""Values one filter field may list (a long list is one Qdrant condition per value)."""

FilterValue = Annotated[str, Field(max_length=1024)]
FilterValues = Annotated[list[FilterValue], Field(max_length=MAX_FILTER_VALUES)]
MetadataValue = Annotated[str, Field(max_length=1024)] | int | bool


class FilterBody(BaseModel):
    document_id: FilterValue | FilterValues | None = None
    filename: FilterValue | FilterValues | None = None
    metadata: dict[Annotated[str, Field(max_length=256)], MetadataValue] = Field(
        default_factory=dict, max_length=32
    )

    def to_filter(self) -> SearchFilter:
        def listed(value: str | list[str] | None) -> list[str]:
            if value is None:
                return []
            return [value] if isinstance(value, str) else list(value)

        return SearchFilter(listed(self.document_id), listed(self.filename), dict(self.metadata))


class SearchBody(BaseModel):
    query: str = Field(min_length=1, max_length=8000)
    collection: str = "default"
    top_k: int = Field(5, ge=1, le=100)
    filter: FilterBody | None = None
    retrieval: Retrieval | None = None


@router.post("/v1/search", summary="Nearest chunks to a query", responses=error_responses(400, 404))
async def search(
    body: SearchBody,
    searcher: SearcherDep,
    settings: SettingsDep,
    key: ReadKey,
    recorder: RecorderDep,
) -> dict[str, Any]:
    collection = usable_collection(key, body.collection)
    account = Account(key.id, key.name, collection)
    bill_to(account)  # the query's embedding, for the rest of this request
    try:
        results = await searcher.search(
            body.query,
            collection=collection,
            top_k=body.top_k,
            filter=body.filter.to_filter() if body.filter else None,
            retrieval=body.retrieval or settings.retrieval,
        )
    except NotFound as exc:  # one wording, whichever store: as for a collection the key lacks
        raise hidden_collection(collection) from exc
    recorder.searched(account)
    return {"results": [result.to_api() for result in results]}
