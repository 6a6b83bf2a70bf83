"""Who may call the balancer, and which upstreams it may be given.

``Guard`` decides, for the proxy (``proxy.ProxyApp``, which asks it first) and in front of the
balancer's own routes (``GuardMiddleware``). The admin routes (pool status and membership,
``/metrics``) need ``Authorization: Bearer`` with ``RAG_BALANCER_ADMIN_KEY``; without one set
they answer loopback clients only. Proxied routes need one of ``RAG_BALANCER_API_KEYS`` (or the
admin key) once any is set, sent as ``Authorization: Bearer`` or ``X-Api-Key`` (llama-server's
``--api-key`` convention, so the OpenAI SDK's ``api_key`` works). ``/health`` and the API docs
stay open. Keys are compared with :func:`hmac.compare_digest` against every configured key.
Each client key has a name (the team: ``RAG_BALANCER_API_KEYS`` as a JSON object of names to
keys, or ``key-1``, ``key-2``, ... by position in a list; the admin key is ``admin``); the guard
puts the name of the key a request presented into its scope (:data:`TENANT`), and the proxy
passes it to the pool as the request's tenant, so that the buffer serves teams in turn.

On proxied routes the guard answers as llama-server with ``--api-key`` does, for its clients
(llama.cpp's own test suite checks both): CORS preflights (``OPTIONS``, which browsers send
without credentials) pass without a key, and a missing or wrong key is a 401 whose ``type`` is
``authentication_error`` (:class:`ProxiedUnauthorized`, with llama-server's ``code``) in the
service's error shape.

:func:`check_upstream_url` accepts a scheme, a host and a port only (no user info, path, query
or fragment), optionally from an allow-list of hosts: a registered URL with a path made the
poller GET arbitrary paths, and a password in one was shown by ``/v1/pool`` and ``/metrics``.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from rag.core.errors import RagError, Unauthorized, ValidationFailed
from rag.web.errors import error_response

ADMIN_ROUTES = frozenset(
    {("GET", "/v1/pool"), ("POST", "/v1/pool/upstreams"), ("DELETE", "/v1/pool/upstreams"),
     ("GET", "/metrics")}
)  # fmt: skip
OPEN_ROUTES = frozenset(
    {("GET", "/health"), ("HEAD", "/health"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"),
     ("GET", "/redoc"), ("GET", "/openapi.json")}
)  # fmt: skip


class ProxiedUnauthorized(Unauthorized):
    """A proxied request without a valid key: 401 as llama-server words it."""

    type = "authentication_error"


TENANT = "rag.tenant"
"""Scope key of the name of the client key a proxied request presented (absent: no keys)."""
ADMIN_NAME = "admin"


def key_names(keys: Sequence[str] | Mapping[str, str]) -> list[tuple[str, str]]:
    """Client keys with their names: a mapping's, or ``key-1``, ``key-2``, ... for a list."""
    if isinstance(keys, Mapping):
        return list(keys.items())
    return [(f"key-{n}", key) for n, key in enumerate(keys, 1)]


def presented_key(scope: Scope) -> str | None:
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1")
    return None


def matches(token: str | None, keys: Sequence[str]) -> bool:
    """Whether ``token`` is one of ``keys``, comparing it with every one in constant time."""
    if token is None:
        return False
    given = token.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


def identify(token: str | None, keys: Sequence[tuple[str, str]]) -> str | None:
    """The name of the key ``token`` is, or ``None``; compared with every key in constant time."""
    if token is None:
        return None
    given = token.encode()
    found = None
    for name, key in keys:
        if hmac.compare_digest(given, key.encode()) and found is None:
            found = name
    return found


def _loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


class Guard:
    """Who may call which route: :meth:`refusal` says, for one request."""

    def __init__(
        self, *, admin_keys: Sequence[str], client_keys: Sequence[str] | Mapping[str, str]
    ):
        self.admin_keys = list(admin_keys)
        named = key_names(client_keys)
        self.client_keys = [*named, *((ADMIN_NAME, key) for key in admin_keys)] if named else []

    def refusal(self, scope: Scope) -> RagError | None:
        """Why the HTTP request ``scope`` may not go on (``None``: it may). For a proxied
        request with a valid client key, the key's name goes into ``scope`` (:data:`TENANT`)."""
        route = (scope["method"], scope["path"])
        if route in ADMIN_ROUTES:
            if self.admin_keys:
                if not matches(presented_key(scope), self.admin_keys):
                    return Unauthorized("the balancer's admin routes need its admin key")
            elif not _loopback(scope):
                return Unauthorized(
                    "without RAG_BALANCER_ADMIN_KEY the admin routes answer loopback only"
                )
        elif route not in OPEN_ROUTES and self.client_keys and scope["method"] != "OPTIONS":
            name = identify(presented_key(scope), self.client_keys)
            if name is None:
                return ProxiedUnauthorized(
                    "Invalid API Key: send Authorization: Bearer KEY", code=401
                )
            scope[TENANT] = name
        return None


class GuardMiddleware:
    """:class:`Guard` in front of an ASGI app (the balancer's own routes)."""

    def __init__(self, app: ASGIApp, guard: Guard):
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.guard.refusal(scope)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def check_upstream_url(url: str, allowed_hosts: Sequence[str] = ()) -> str:
    """``scheme://host:port`` of ``url``, or ``ValidationFailed`` (422)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValidationFailed(f"invalid upstream URL {url!r}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed("an upstream URL is http(s)://host:port")
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed("an upstream URL may not carry user info")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValidationFailed("an upstream URL is a scheme, a host and a port: no path or query")
    host = parts.hostname
    if allowed_hosts and host not in allowed_hosts:
        raise ValidationFailed(f"upstream host {host!r} is not in RAG_BALANCER_ALLOWED_HOSTS")
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}" + (f":{port}" if port is not None else "")
