"""``GET /v1/usage``: tokens and their cost per key, collection and day (an admin key sees
every key's, any other key its own), with the totals of the rows shown."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query

from ingest.registry import UsageRow, total
from rag.api.auth import KEYED_ERRORS, ReadKey
from rag.api.deps import ComponentsDep
from rag.service.usage import prices

router = APIRouter(tags=["keys"], responses=KEYED_ERRORS)


@router.get("/v1/usage", summary="Tokens and cost per key, collection and day")
async def usage(
    components: ComponentsDep,
    key: ReadKey,
    since: Annotated[date | None, Query(description="First day (UTC), e.g. 2026-12-01.")] = None,
    collection: Annotated[str | None, Query(max_length=255)] = None,
    key_id: Annotated[
        str | None, Query(max_length=64, description="One key's rows (an admin key only).")
    ] = None,
) -> dict[str, Any]:
    own = None if key.has_scope("admin") else key.id
    rows: list[UsageRow]
    if own is not None and key_id is not None and key_id != own:
        rows = []  # another key's: as if it had none
    else:
        await components.recorder.flush()  # this replica's searches and embeddings so far
        rows = await components.usage.totals(
            since=since, key_id=own or key_id, collection=collection
        )
    price = prices(components.settings)
    return {
        "usage": [row.to_api(price) for row in rows],
        "totals": total(rows, price),
        "currency": price.currency,
        "prices_per_1k_tokens": {
            "prompt": price.prompt,
            "completion": price.completion,
            "embedding": price.embedding,
        },
    }
