"""The one JSON error shape as the OpenAPI schemas of both apps document it.

    @router.get("/v1/things/{id}", responses=error_responses(404))

:func:`error_responses` gives FastAPI's ``responses=`` entries for the statuses a route may
answer with ``{"error": {"type", "message", "request_id", ...}}`` (``rag/web/errors.py``), with the
headers that go with them (``WWW-Authenticate`` on 401, ``Retry-After`` on 429 and 503). A 422
listed here replaces FastAPI's own ``HTTPValidationError``, which this service never sends.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    """``type`` is stable (docs/api.md lists them); other fields depend on the error (``problems``
    of a 422, ``reason``, ``quota``, ``filename``...)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Stable error kind: not_found, validation_error, ...")
    message: str
    request_id: str = Field(description="Also the X-Request-ID response header.")


class ErrorBody(BaseModel):
    error: ErrorDetail


DESCRIPTIONS = {
    400: "Invalid request",
    401: "No API key, or an unknown or revoked one",
    403: "The key lacks the route's scope",
    404: "Not found (or in a collection the key may not use)",
    408: "The request body stopped arriving",
    409: "Conflict with the current state",
    413: "The request body is too large",
    415: "Unsupported content type",
    422: "The request does not fit the schema",
    429: "Rate limited or past the key's quota",
    501: "Switched off here (the balancer's /metrics with RAG_BALANCER_METRICS=false)",
    502: "An upstream answered wrongly",
    503: "An upstream, the vector store or the registry is unavailable",
}
_HEADERS = {
    401: {"WWW-Authenticate": "Bearer"},
    429: {"Retry-After": "Seconds to wait before trying again."},
    503: {"Retry-After": "Seconds to wait before trying again."},
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting the error shape for ``statuses``."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": DESCRIPTIONS[status]}
        if status in _HEADERS:
            entry["headers"] = {
                name: {"description": text, "required": True, "schema": {"type": "string"}}
                for name, text in _HEADERS[status].items()
            }
        responses[status] = entry
    return responses
