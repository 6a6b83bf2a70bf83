"""The one place where the error tree (``rag.core.errors``) becomes an HTTP answer.

Both apps (the service and the balancer) install these handlers: a ``RagError`` becomes its
status and the stable body ``{"error": {"type", "message", "request_id", ...}}`` with
``Retry-After`` where it applies; FastAPI's validation errors and Starlette's HTTP errors are
mapped into the same shape; anything unexpected is a 500 that says nothing internal.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.core.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RagError,
    RateLimited,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    UnsupportedType,
    ValidationFailed,
)
from rag.core.requestid import current_request_id

log = logging.getLogger(__name__)


def error_response(exc: RagError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif isinstance(exc, Unavailable | RateLimited):
        headers["Retry-After"] = "1"
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
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
        401: Unauthorized,
        403: Forbidden,
        404: NotFound,
        408: RequestTimeout,
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
