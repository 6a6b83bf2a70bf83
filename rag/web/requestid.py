"""Request ids: taken from ``X-Request-ID`` when the client sends a sane one, else made here.

Pure ASGI middleware (no BaseHTTPMiddleware), so streamed responses pass through untouched.
"""

from __future__ import annotations

import random
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.core.requestid import reset_request_id, set_request_id

HEADER = "x-request-id"
_HEADER = HEADER.encode()
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def sane_request_id(value: str) -> bool:
    """Whether a client's ``X-Request-ID`` is kept (short, no odd characters)."""
    return _SANE.match(value) is not None


def new_request_id() -> str:
    """32 random hex digits, as a uuid4's: an id, not a secret (``uuid4`` reads the OS's
    random source, a system call per request)."""
    return f"{random.getrandbits(128):032x}"


def request_id_of(scope: Scope) -> str:
    """The id of the request ``scope``: the client's ``X-Request-ID`` if sane, else a new one."""
    incoming = next((v for k, v in scope["headers"] if k == _HEADER), b"").decode("latin-1")
    return incoming if sane_request_id(incoming) else new_request_id()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        token = set_request_id(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((_HEADER, request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_request_id(token)
