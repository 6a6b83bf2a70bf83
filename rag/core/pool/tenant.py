"""Who a request is made for (its tenant), for fairness in the pool's buffer.

A tenant is an API key's name (the team): names come from the key store or the balancer's
settings, never from what a client sends, so they are safe as metric labels. Callers pass it to
``Pool.request`` / ``Pool.stream`` as ``tenant=``; without it the pool takes the one the HTTP layer
set for the request being served (``set_tenant``, like the request id), so code in between
(retrieval, embeddings, prompts) need not carry it. Requests without either are one tenant,
:data:`OPEN_TENANT`.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

OPEN_TENANT = ""
"""The tenant of requests made for no key (open mode, or a caller that names none)."""

_tenant: ContextVar[str | None] = ContextVar("tenant", default=None)


def current_tenant() -> str | None:
    return _tenant.get()


def set_tenant(name: str) -> Token[str | None]:
    return _tenant.set(name)


def reset_tenant(token: Token[str | None]) -> None:
    _tenant.reset(token)


def resolve_tenant(given: str | None) -> str:
    """``given``, else the request's tenant, else :data:`OPEN_TENANT`."""
    if given is not None:
        return given
    current = _tenant.get()
    return OPEN_TENANT if current is None else current
