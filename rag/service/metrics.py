"""Prometheus metrics of one process (its own registry: no process-wide globals).

The pools', the supervised children's and the tokens used per API key
(``rag.service.usage``); the HTTP app adds its request metrics
(``rag.web.metrics``) to the same registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from rag.core.pool.metrics import PoolMetrics


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.pool = PoolMetrics(self.registry)
        self.child_up = Gauge(
            "rag_llama_child_up",
            "1 when a supervised llama-server child is healthy.",
            ["name", "role"],
            registry=self.registry,
        )
        self.child_restarts = Gauge(
            "rag_llama_child_restarts",
            "Restarts of a supervised llama-server child.",
            ["name", "role"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "rag_tokens",
            "Tokens used, llama-server's own counts, by API key name (from the key store) and "
            "kind: prompt and completion (answers), embedding (searches, answers, ingestion).",
            ["key", "kind"],
            registry=self.registry,
        )
