"""``GET /v1/usage``: tokens per key, collection and day (an admin key sees every key's, any
other key its own)."""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter

from rag.api.auth import KEYED_ERRORS, ReadKey
from rag.api.deps import ComponentsDep

router = APIRouter(tags=["keys"], responses=KEYED_ERRORS)


@router.get("/v1/usage", summary="Prompt and completion tokens per key, collection and day")
async def usage(
    components: ComponentsDep, key: ReadKey, since: date | None = None
) -> dict[str, Any]:
    own = None if key.has_scope("admin") else key.id
    rows = await components.usage.totals(since=since, key_id=own)
    return {"usage": [row.to_api() for row in rows]}
