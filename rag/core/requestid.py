"""The id of the request being served, for error bodies and logs (no web framework here).

``rag.web.requestid.RequestIdMiddleware`` sets it for each HTTP request; code below the HTTP apps
only reads it.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str) -> Token[str | None]:
    return _request_id.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)
