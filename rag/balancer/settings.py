"""Typed settings of the standalone balancer (``rag balancer``), env prefix ``RAG_BALANCER_``.

Lists are JSON lists: ``RAG_BALANCER_UPSTREAMS='["http://10.0.0.5:8080", "http://10.0.0.6:8080"]'``.
The pool's own settings are the same model the service uses (``rag.core.pool.settings``), read
here with the prefix ``RAG_BALANCER_`` (``RAG_BALANCER_POLICY``, ``RAG_BALANCER_BUFFER_SIZE``, ...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.balancer.busypoll import AUTO_BUSY_POLL, AUTO_BUSY_POLL_CPUS
from rag.core.pool.settings import PoolSettings
from rag.core.settings_api import (
    DEFAULT_HEADER_BYTES,
    DEFAULT_HEADER_READ_TIMEOUT,
    HeaderBytes,
    HeaderReadTimeout,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090


class BalancerPoolSettings(PoolSettings):
    """The pool behind the balancer: ``PoolSettings`` read from ``RAG_BALANCER_*``."""

    model_config = SettingsConfigDict(env_prefix="RAG_BALANCER_", extra="ignore")


class BalancerSettings(BaseSettings):
    """Settings of the reverse proxy in front of a pool of llama-servers."""

    model_config = SettingsConfigDict(env_prefix="RAG_BALANCER_", extra="ignore")

    host: str = Field(
        DEFAULT_HOST,
        description="Address the balancer listens on; several, comma-separated, as "
        "llama-server's --host takes them (`127.0.0.1,::1`).",
    )
    port: int = Field(DEFAULT_PORT, description="Port the balancer listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    upstreams: list[str] = Field(
        default_factory=list, description="llama-server base URLs registered at start."
    )
    http: Literal["auto", "httptools", "h11"] = Field(
        "auto",
        description="uvicorn's HTTP implementation. httptools (auto's choice, the faster) writes "
        "response header names in lower case; h11 keeps the upstream's spelling, for clients "
        "that compare header names case-sensitively.",
    )
    max_header_bytes: HeaderBytes = DEFAULT_HEADER_BYTES
    header_read_timeout: HeaderReadTimeout = DEFAULT_HEADER_READ_TIMEOUT
    admin_key: SecretStr | None = Field(
        None,
        description="Key of the admin routes (pool status and membership, /metrics), sent as "
        "`Authorization: Bearer`; unset: those routes answer loopback clients only.",
    )
    api_keys: list[SecretStr] | dict[str, SecretStr] = Field(
        default_factory=list,
        description="Keys clients must send on proxied routes (`Authorization: Bearer` or "
        "`X-Api-Key`, llama-server's convention); empty: proxied routes are open. Clients' own "
        "credentials and cookies never reach an upstream (it gets upstream_api_key). A JSON "
        'object names them (`{"team-a": "KEY", ...}`: the buffer serves teams in turn when '
        "slots are short); a list's are named key-1, key-2, ...",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts (names or addresses as written) upstream URLs may name; empty: any.",
    )
    max_upstreams: int = Field(64, ge=1, description="Upstreams the pool may hold; more: 409.")
    max_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest request body in bytes: 413."
    )
    busy_poll: Annotated[float, Field(ge=0, le=60)] | Literal["auto"] = Field(
        "auto",
        description="Seconds the event loop keeps polling without sleeping after each proxied "
        "request begins or ends (HAProxy's busy-polling): on a VM or a CPU with deep idle "
        "states a sleeping loop wakes late and cold (0.3 ms of added latency on the H200 host, "
        "docs/pool.md). Costs up to a core while requests come; 0: off; auto: "
        f"{AUTO_BUSY_POLL} s on a host with an NVIDIA GPU and at least {AUTO_BUSY_POLL_CPUS} "
        "CPUs (its upstreams answer in milliseconds and it has cores to spare), else off.",
    )
    metrics: bool = Field(
        True,
        description="Serve /metrics; false: it answers 501, as llama-server without --metrics.",
    )
    pool: BalancerPoolSettings = Field(
        default_factory=BalancerPoolSettings,
        description="The pool's settings (RAG_BALANCER_POLICY, RAG_BALANCER_BUFFER_SIZE, ...).",
    )

    def client_keys(self) -> list[str] | dict[str, str]:
        """``api_keys`` in clear: a list, or names (the teams) to keys."""
        if isinstance(self.api_keys, dict):
            return {name: key.get_secret_value() for name, key in self.api_keys.items()}
        return [key.get_secret_value() for key in self.api_keys]


def balancer_settings(**given: Any) -> BalancerSettings:
    """The environment's settings with the options that were given (not ``None``) on top.

    Options of the pool (``policy``, ``buffer_size``, ...) go to the nested model, which still
    reads every other pool setting from the environment."""
    given = {key: value for key, value in given.items() if value is not None}
    pool_fields = set(PoolSettings.model_fields)
    pool_given = {key: given.pop(key) for key in list(given) if key in pool_fields}
    return BalancerSettings(pool=BalancerPoolSettings(**pool_given), **given)
