"""Typed settings of the standalone balancer (``rag balancer``), env prefix ``RAG_BALANCER_``.

Lists are JSON lists: ``RAG_BALANCER_UPSTREAMS='["http://10.0.0.5:8080", "http://10.0.0.6:8080"]'``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.pool.policy import Policy


class BalancerSettings(BaseSettings):
    """Settings of the reverse proxy in front of a pool of llama-servers."""

    model_config = SettingsConfigDict(env_prefix="RAG_BALANCER_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the balancer listens on.")
    port: int = Field(8090, description="Port the balancer listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    upstreams: list[str] = Field(
        default_factory=list, description="llama-server base URLs registered at start."
    )
    policy: Policy = Field("slots", description="slots, round-robin or least-requests.")
    affinity: bool = Field(
        True, description="Send prompts sharing a prefix to the upstream that has it cached."
    )
    affinity_slack: int = Field(
        1, ge=0, description="Free slots the affinity upstream may lag behind the freest one."
    )
    affinity_wait: float = Field(
        0.0,
        ge=0,
        description="Seconds a request with a long cached prefix (1 KiB or more) may wait for the "
        "upstreams holding it when they are full, before it goes elsewhere (0: never). Pays off "
        "with many distinct prefixes; with a few hot ones it keeps them from spreading.",
    )
    affinity_block_chars: int = Field(
        256, ge=16, description="Granularity in characters of the prompt prefixes compared."
    )
    handoff_tokens: int = Field(
        2,
        ge=0,
        description="Send the oldest waiting request ahead to an upstream when one of its "
        "streamed generations is this many tokens from its limit (0: off).",
    )
    poll_interval: float = Field(0.5, gt=0, description="Seconds between polls of an upstream.")
    buffer_size: int = Field(64, ge=0, description="Requests that may wait for a free slot.")
    buffer_timeout: float = Field(
        30.0, gt=0, description="Seconds a request may wait for a slot before a 503."
    )
    quarantine: float = Field(
        5.0, gt=0, description="Seconds an upstream is skipped after a connect error."
    )
    connect_timeout: float = Field(2.0, gt=0, description="Connect timeout to upstreams.")
    read_timeout: float = Field(
        120.0, gt=0, description="Longest gap in seconds between two chunks from an upstream."
    )
    max_connections: int = Field(512, ge=1, description="Connections to all upstreams at most.")
