"""``/v1/keys``: create, list and revoke API keys (the ``admin`` scope); ``GET /v1/keys/self``
shows any key its own record."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from ingest.registry import ApiKey, Scope
from rag.api.auth import KEYED_ERRORS, AdminKey, ReadKey
from rag.api.deps import ComponentsDep
from rag.core.errors import NotFound
from rag.web.error_schema import error_responses

router = APIRouter(tags=["keys"], responses=KEYED_ERRORS)


class KeyBody(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="Who holds it (the team).")
    scopes: list[Scope] = Field(["read"], min_length=1, max_length=3)
    collections: list[str] = Field(
        min_length=1,
        max_length=100,
        description="Collection names, prefixes ending in '*' (team-*), or '*' for all.",
    )


@router.post(
    "/v1/keys",
    status_code=201,
    summary="Create an API key (shown once)",
    responses=error_responses(400),
)
async def create_key(body: KeyBody, components: ComponentsDep, _: AdminKey) -> dict[str, Any]:
    token, key = await components.auth.store.create(
        name=body.name, scopes=body.scopes, collections=body.collections
    )
    return {**key.to_api(), "key": token}


@router.get("/v1/keys", summary="API keys (never their secrets)")
async def list_keys(
    components: ComponentsDep, _: AdminKey, include_revoked: bool = False
) -> dict[str, Any]:
    keys = await components.auth.store.list(include_revoked=include_revoked)
    return {"keys": [key.to_api() for key in keys]}


@router.get("/v1/keys/self", summary="The key this request is made with")
async def own_key(key: ReadKey) -> dict[str, Any]:
    return key.to_api()


@router.delete(
    "/v1/keys/{key_id}",
    status_code=204,
    summary="Revoke an API key",
    responses=error_responses(404),
)
async def revoke_key(key_id: str, components: ComponentsDep, _: AdminKey) -> Response:
    revoked: ApiKey | None = await components.auth.revoke(key_id)
    if revoked is None:
        raise NotFound(f"no key {key_id}")
    return Response(status_code=204)
