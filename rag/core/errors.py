"""The service's error tree (no web framework here: the HTTP apps translate it).

    RagError                      500 internal          (never shows its internal message)
    ├── InvalidRequest            400 invalid_request
    │   ├── ValidationFailed      422 validation_error
    │   ├── UnsupportedType       415 unsupported_type
    │   ├── PayloadTooLarge       413 payload_too_large
    │   └── HeaderTooLarge        431 header_too_large: the request head (rag/web/server.py)
    ├── Unauthorized              401 unauthorized       (WWW-Authenticate: Bearer)
    ├── Forbidden                 403 forbidden: the key lacks the scope
    ├── NotFound                  404 not_found
    ├── RequestTimeout            408 request_timeout: the head or body stopped arriving
    ├── Conflict                  409 conflict
    ├── RateLimited               429 rate_limited       (Retry-After)
    │   └── QuotaExceeded         429 quota_exceeded: a key past its rate (Retry-After)
    ├── Unavailable               503 unavailable        (Retry-After)
    │   ├── UpstreamUnavailable   503 upstream_unavailable: no llama.cpp server can take it
    │   └── StoreUnavailable      503 store_unavailable: Qdrant or the registry is unreachable
    ├── UpstreamFailed            502 upstream_error: an upstream answered, but wrongly
    └── NotSupported              501 not_supported: switched off here (the balancer's /metrics)

    RuntimeSetupError             not HTTP: building llama-server or preparing a model failed

Every HTTP error body is ``{"error": {"type", "message", "request_id", ...}}``. Library exceptions
(httpx, qdrant-client, SQLAlchemy) are translated into this tree where they are caught, with
``raise ... from exc``; anything else becomes a 500 whose message says nothing internal. The one
place where the tree becomes an HTTP answer is ``rag/web/errors.py``, used by both apps.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rag.core.requestid import current_request_id


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


class HeaderTooLarge(InvalidRequest):
    status = 431
    type = "header_too_large"


class Unauthorized(RagError):
    status = 401
    type = "unauthorized"


class Forbidden(RagError):
    status = 403
    type = "forbidden"


class NotFound(RagError):
    status = 404
    type = "not_found"


class RequestTimeout(RagError):
    status = 408
    type = "request_timeout"


class Conflict(RagError):
    status = 409
    type = "conflict"


class RateLimited(RagError):
    status = 429
    type = "rate_limited"


class QuotaExceeded(RateLimited):
    type = "quota_exceeded"


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


class NotSupported(RagError):
    status = 501
    type = "not_supported"


class RuntimeSetupError(Exception):
    """Building llama-server or preparing a model failed; the message names the cause."""
