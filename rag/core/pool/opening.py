"""What a pool's request carries on its way, and the lifetime of its opened answer.

``Opening`` is what ``Pool.stream`` and ``Pool.forward`` return: ``async with`` opens the answer
with failover (``Pool._open``) and, at the block's end, closes it and gives the slot back. The
headers helpers put an upstream's API key on a request unless the caller sent its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Generic, TypeVar

import httpx

from rag.core.errors import UpstreamFailed
from rag.core.pool.scheduler import Lease
from rag.core.pool.transport import Answer
from rag.core.pool.upstream import Upstream

R = TypeVar("R", httpx.Response, Answer)
"""An opened answer: httpx's (``request``, ``stream``) or the raw one (``forward``)."""

Headers = Mapping[str, str] | Sequence[tuple[bytes, bytes]]
"""A request's headers: a mapping, or the raw pairs a proxy passes on."""


def with_auth(headers: Headers | None, auth: Mapping[str, str]) -> Headers | None:
    """``headers`` with the upstream's key, unless the caller sent an ``Authorization``."""
    if not auth:
        return headers
    if headers is None:
        return auth
    if isinstance(headers, httpx.Headers):
        if "authorization" in headers:
            return headers
        merged = headers.copy()
        merged.update(auth)
        return merged
    if isinstance(headers, Mapping):
        if any(name.lower() == "authorization" for name in headers):
            return headers
        return {**headers, **auth}
    return with_raw_auth(headers, auth)


def with_raw_auth(
    headers: Sequence[tuple[bytes, bytes]], auth: Mapping[str, str]
) -> Sequence[tuple[bytes, bytes]]:
    if not auth or any(name.lower() == b"authorization" for name, _ in headers):
        return headers
    return [*headers, *((name.encode(), value.encode()) for name, value in auth.items())]


class Opening(Generic[R]):
    """``async with``: the answer, opened with failover (``open``: ``Pool._open``); at the
    block's end it is closed and its lease given back (``release``). A transport error while
    the caller reads it is the upstream's failure: counted (``failed``), and raised as
    ``UpstreamFailed``."""

    __slots__ = ("_failed", "_open", "_opened", "_release")

    def __init__(
        self,
        open: Callable[[], Awaitable[tuple[Lease, R]]],
        failed: Callable[[Upstream, str, str], None],
        release: Callable[[Lease], None],
    ) -> None:
        self._open: Callable[[], Awaitable[tuple[Lease, R]]] = open
        self._failed = failed
        self._release = release
        self._opened: tuple[Lease, R] | None = None

    async def __aenter__(self) -> R:
        self._opened = await self._open()
        return self._opened[1]

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._opened is not None
        lease, response = self._opened
        try:
            if isinstance(exc, httpx.TransportError):
                name = type(exc).__name__
                self._failed(lease.upstream, name, f"{name} while streaming")
                raise UpstreamFailed(f"the upstream stream broke off: {name}") from exc
        finally:
            try:
                await response.aclose()
            finally:
                self._release(lease)
