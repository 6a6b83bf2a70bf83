"""Who may call a route: the API key of ``Authorization: Bearer KEY`` as a typed dependency.

    async def search(body: SearchBody, key: ReadKey) -> ...:
        collection = usable_collection(key, body.collection)

``ReadKey``, ``WriteKey`` and ``AdminKey`` answer 401 without a live key and 403 when the key
lacks the scope (``admin`` has every scope). A collection the key may not use is answered exactly
as one that does not exist (:func:`usable_collection`, :func:`hidden_collection`), and so are
documents and jobs in such a collection. In ``auth=open`` mode every request acts as
:data:`rag.service.keys.OPEN`.

The key's name is the request's tenant (``rag.core.pool.tenant.set_tenant``): the pools serve
waiting requests of different teams in turn, the embedder's queue too, without every layer in
between carrying it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from ingest.registry import ApiKey, Scope
from rag.api.deps import ComponentsDep
from rag.core.collections import check_collection
from rag.core.errors import Forbidden, NotFound, Unauthorized
from rag.core.pool.tenant import set_tenant
from rag.service.keys import OPEN
from rag.web.error_schema import error_responses

KEYED_ERRORS = error_responses(401, 403, 408, 413, 422, 429, 503)
"""What every route that needs a key may answer besides its own (for its router's
``responses=``): no or a dead key, a missing scope, a body too large or too slow, an invalid
request, the key past its rate, the registry unreachable while the key is looked up."""


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


async def _key(request: Request, components: ComponentsDep) -> ApiKey:
    auth = components.auth
    if auth.open_mode:
        set_tenant(OPEN.name)
        return OPEN
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("an API key is needed: send Authorization: Bearer KEY")
    key = await auth.authenticate(token)
    if key is None:
        raise Unauthorized("invalid or revoked API key")
    auth.rates.charge(key.id, key.name)  # 429 quota_exceeded past the key's rate
    request.state.api_key = key
    set_tenant(key.name)  # for the rest of this request (its task's context)
    return key


def _require(scope: Scope) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    async def check(key: Annotated[ApiKey, Depends(_key)]) -> ApiKey:
        if not key.has_scope(scope):
            raise Forbidden(f"this key lacks the {scope!r} scope")
        return key

    return check


ReadKey = Annotated[ApiKey, Depends(_require("read"))]
WriteKey = Annotated[ApiKey, Depends(_require("write"))]
AdminKey = Annotated[ApiKey, Depends(_require("admin"))]


def hidden_collection(collection: str) -> NotFound:
    """What a search of a collection that does not exist answers."""
    return NotFound(f"collection {collection!r} does not exist")


def usable_collection(key: ApiKey, collection: str) -> str:
    """``collection`` when it is valid and the key may use it; otherwise it does not exist."""
    check_collection(collection)
    if not key.may_use(collection):
        raise hidden_collection(collection)
    return collection
