"""Prometheus metrics of HTTP requests, by route template (bounded label sets)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "rag_http_requests",
            "HTTP requests answered, by route and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "rag_http_request_seconds",
            "Time to the start of the response, by route.",
            ["method", "route"],
            registry=registry,
        )


class MetricsMiddleware:
    """Counts requests by route template (not raw path, to keep label sets bounded)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                self.metrics.latency.labels(scope["method"], path).observe(
                    time.perf_counter() - started
                )
                self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            await send(message)

        await self.app(scope, receive, record)
