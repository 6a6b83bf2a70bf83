"""The pool's own refinement of the error tree (see ``rag.core.errors``).

``UpstreamRejected`` is an ``UpstreamFailed`` that carries the upstream's 4xx (or 501) status and
body, so that the balancer can pass them through unchanged to a client that expects a
``llama-server``.
"""

from __future__ import annotations

from rag.core.errors import UpstreamFailed


class UpstreamRejected(UpstreamFailed):
    """The upstream refused the request itself (4xx, 501): not retried elsewhere."""

    def __init__(
        self,
        upstream_status: int,
        body: bytes,
        content_type: str | None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(f"the upstream refused the request (HTTP {upstream_status})")
        self.upstream_status = upstream_status
        self.upstream_body = body
        self.content_type = content_type
        self.upstream_headers = headers or []  # as sent (raw), for a proxy to pass on
