"""The service's error tree, and the one place where it becomes an HTTP answer.

    RagError                      500 internal          (never shows its internal message)
    ├── InvalidRequest            400 invalid_request
    │   ├── ValidationFailed      422 validation_error
    │   ├── UnsupportedType       415 unsupported_type
    │   └── PayloadTooLarge       413 payload_too_large
    ├── NotFound                  404 not_found
    ├── Conflict                  409 conflict
    ├── RateLimited               429 rate_limited       (Retry-After)
    ├── Unavailable               503 unavailable        (Retry-After)
    │   ├── UpstreamUnavailable   503 upstream_unavailable: no llama.cpp server can take it
    │   └── StoreUnavailable      503 store_unavailable: Qdrant or the registry is unreachable
    └── UpstreamFailed            502 upstream_error: an upstream answered, but wrongly

    RuntimeSetupError             not HTTP: building llama-server or preparing a model failed

Every HTTP error body is ``{"error": {"type", "message", "request_id", ...}}``. Library exceptions
(httpx, qdrant-client, SQLAlchemy) are translated into this tree where they are caught, with
``raise ... from exc``; anything else becomes a 500 whose message says nothing internal.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.requestid import current_request_id

log = logging.getLogger(__name__)


class RagError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal"

    def __init__(self, message: str, *, retry_after: float | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.details = details

    def body(self) -> dict[str, Any]:
        message = "internal error" if type(self) is RagError else self.message
        error: dict[str, Any] = {"type": self.type, "message": message}
        error.update(self.details)
        error["request_id"] = current_request_id()
        return {"error": error}


class InvalidRequest(RagError):
    status = 400
    type = "invalid_request"


class ValidationFailed(InvalidRequest):
    status = 422
    type = "validation_error"


class UnsupportedType(InvalidRequest):
    status = 415
    type = "unsupported_type"


class PayloadTooLarge(InvalidRequest):
    status = 413
    type = "payload_too_large"


class NotFound(RagError):
    status = 404
    type = "not_found"


class Conflict(RagError):
    status = 409
    type = "conflict"


class RateLimited(RagError):
    status = 429
    type = "rate_limited"


class Unavailable(RagError):
    status = 503
    type = "unavailable"


class UpstreamUnavailable(Unavailable):
    type = "upstream_unavailable"


class StoreUnavailable(Unavailable):
    type = "store_unavailable"


class UpstreamFailed(RagError):
    status = 502
    type = "upstream_error"


class RuntimeSetupError(Exception):
    """Building llama-server or preparing a model failed; the message names the cause."""


def error_response(exc: RagError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif isinstance(exc, Unavailable | RateLimited):
        headers["Retry-After"] = "1"
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _on_rag_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RagError)
    if exc.status >= 500:
        log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.status, exc.message)
    return error_response(exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))}
        for err in exc.errors()
    ]
    first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
    message = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else first["msg"]
    return error_response(ValidationFailed(str(message), problems=problems))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kinds: dict[int, type[RagError]] = {
        400: InvalidRequest,
        404: NotFound,
        409: Conflict,
        413: PayloadTooLarge,
        415: UnsupportedType,
        429: RateLimited,
    }
    kind = kinds.get(exc.status_code)
    if kind is not None:
        return error_response(kind(str(exc.detail)))
    body = {
        "error": {
            "type": "http_error",
            "message": str(exc.detail),
            "request_id": current_request_id(),
        }
    }
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


class CatchAllMiddleware:
    """Turns an unexpected exception into the JSON 500 inside the request-id middleware, so the
    answer carries the request id (Starlette's own last-resort handler sits outside it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await error_response(RagError("internal error"))(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; call before adding the request-id middleware (which must wrap
    the catch-all middleware added here)."""
    app.add_exception_handler(RagError, _on_rag_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_middleware(CatchAllMiddleware)
