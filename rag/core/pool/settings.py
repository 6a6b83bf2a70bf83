"""The one settings model of a pool, and the one way to build a pool and its client from it.

The service (``RAG_POOL_*``), the balancer (``RAG_BALANCER_*``) and the evaluation runtime use the
same fields; only the environment prefix differs, so each is a subclass that names its prefix.
``Settings.pool`` and ``BalancerSettings.pool`` hold one; ``build_pool`` and ``build_client``
turn it into a :class:`Pool` and the :class:`PoolClient` it sends through.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.core.pool.client import PoolClient, pool_client
from rag.core.pool.metrics import PoolMetrics
from rag.core.pool.policy import Policy
from rag.core.pool.pool import Pool
from rag.core.pool.prefix import BLOCK_CHARS


class PoolSettings(BaseSettings):
    """How a pool chooses upstreams, buffers requests and talks to them."""

    model_config = SettingsConfigDict(env_prefix="RAG_POOL_", extra="ignore")

    policy: Policy = Field(
        "slots",
        description="How the pool chooses an upstream: slots, round-robin or least-requests "
        "(prefix affinity on top of it).",
    )
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
        BLOCK_CHARS, ge=16, description="Granularity in characters of the prompt prefixes compared."
    )
    handoff_tokens: int = Field(
        2,
        ge=0,
        description="Send the oldest waiting request ahead to an upstream when one of its "
        "streamed generations is this many tokens from its limit (0: off).",
    )
    poll_interval: float = Field(0.5, gt=0, description="Seconds between polls of an upstream.")
    poll_quiet: float = Field(
        10.0,
        ge=0,
        description="Seconds without a request of the pool on an idle upstream after which it is "
        "polled with /health only, not /slots (a task that wakes a llama-server started with "
        "--sleep-idle-seconds and restarts its idle timer), so that it may sleep; other "
        "clients' requests there are seen again once the pool sends one. 0: always /slots.",
    )
    buffer_size: int = Field(
        64, ge=0, description="Requests that may wait for a free slot before a 429."
    )
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
    upstream_api_key: SecretStr | None = Field(
        None,
        description="API key of upstreams started with --api-key (external ones: supervised "
        "children get a key of their own at each start): sent as `Authorization: Bearer` on "
        "every request and poll of the pool (/slots, /props, /metrics); the balancer never "
        "passes clients' credentials on.",
    )


def build_client(settings: PoolSettings) -> PoolClient:
    """The client a pool built from ``settings`` sends through (enter it as a context)."""
    return pool_client(
        connect=settings.connect_timeout,
        read=settings.read_timeout,
        max_connections=settings.max_connections,
    )


def build_pool(
    name: str, http: PoolClient, settings: PoolSettings, metrics: PoolMetrics | None = None
) -> Pool:
    """The pool ``name`` with every knob of ``settings``."""
    return Pool(
        name,
        http,
        policy=settings.policy,
        poll_interval=settings.poll_interval,
        poll_quiet=settings.poll_quiet,
        buffer_size=settings.buffer_size,
        buffer_timeout=settings.buffer_timeout,
        quarantine=settings.quarantine,
        metrics=metrics,
        affinity=settings.affinity,
        affinity_slack=settings.affinity_slack,
        handoff_tokens=settings.handoff_tokens,
        affinity_wait=settings.affinity_wait,
        api_key=(
            settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        ),
    )
