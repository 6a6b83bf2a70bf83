"""The settings of the service's HTTP surface: where it listens, API keys, usage and cost, and
request limits; a part of ``rag.core.settings.Settings``, which adds the ``RAG_`` prefix."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

# the request-head limits, the same for the service and the balancer (rag.balancer.settings)
DEFAULT_HEADER_BYTES = 64 * 1024
DEFAULT_HEADER_READ_TIMEOUT = 10.0
HeaderBytes = Annotated[
    int,
    Field(ge=1024, description="Largest request head (request line and headers), in bytes: 431."),
]
HeaderReadTimeout = Annotated[
    float,
    Field(
        gt=0,
        description="Seconds a request head may take from its first byte (or the connection's "
        "opening) to its end before a 408 and a closed connection.",
    ),
]


class ApiSettings(BaseModel):
    """Listening, keys, usage and request limits (the first fields of ``Settings``)."""

    # --- HTTP ---------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, description="Port the API listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the service and its children's output."
    )

    # --- API keys (docs/security.md) -----------------------------------------------------------
    auth: Literal["keys", "open"] = Field(
        "keys",
        description="`keys`: every route but /healthz, /readyz and the API docs needs "
        "`Authorization: Bearer KEY`; `open`: no keys (refused unless host is a loopback "
        "address).",
    )
    admin_key: SecretStr | None = Field(
        None,
        description="An admin key (32+ characters) added to the key store at start-up; without "
        "it the first start generates one into data_dir/admin.key (mode 0600).",
    )
    auth_cache_seconds: float = Field(
        1.0,
        ge=0,
        le=5,
        description="Seconds a replica may reuse a key it looked up (0: the store on every "
        "request); a revocation empties every replica's cache at once all the same.",
    )

    key_rate_per_minute: int = Field(
        0,
        ge=0,
        description="Requests a minute each API key may make on each replica (in bursts of as "
        "many); past it 429 `quota_exceeded` with Retry-After. 0: no limit.",
    )

    key_tokens_per_day: int = Field(
        0,
        ge=0,
        description="Answer tokens (prompt + completion, from the usage records) each API key "
        "may use per UTC day across all replicas; past it POST /v1/answer is 429 "
        "`quota_exceeded` until midnight. 0: no budget.",
    )

    # --- usage and cost (docs/operations.md) ------------------------------------------------
    price_per_1k_prompt_tokens: float = Field(
        0.0, ge=0, description="Cost of 1,000 prompt tokens of answers, in `price_currency`."
    )
    price_per_1k_completion_tokens: float = Field(
        0.0, ge=0, description="Cost of 1,000 completion (generated) tokens, in `price_currency`."
    )
    price_per_1k_embedding_tokens: float = Field(
        0.0,
        ge=0,
        description="Cost of 1,000 embedding tokens (searches, answers' queries and citation "
        "checks, ingestion), in `price_currency`.",
    )
    price_currency: str = Field(
        "USD",
        min_length=1,
        max_length=16,
        description="Currency of the costs GET /v1/usage and `rag usage report` show.",
    )
    usage_flush_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds a replica or worker may keep embedding and search usage in memory "
        "before adding it to the registry (answers are added at once).",
    )

    # --- request limits (docs/security.md) ------------------------------------------------
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest request body of every route but uploads (RAG_MAX_UPLOAD_BYTES): 413.",
    )
    max_header_bytes: HeaderBytes = DEFAULT_HEADER_BYTES
    header_read_timeout: HeaderReadTimeout = DEFAULT_HEADER_READ_TIMEOUT
    body_read_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a request body may pause between two chunks before a 408.",
    )
    body_min_rate: float = Field(
        1024.0,
        ge=0,
        description="Bytes a second a request body must average once its first "
        "RAG_BODY_READ_TIMEOUT has passed, or 408 (a body that trickles in); 0: no minimum.",
    )
    max_metadata_bytes: int = Field(
        4096,
        ge=2,
        le=65536,
        description="Largest `metadata` JSON object of an upload (kept once, in the document's "
        "registry row), in bytes: 400.",
    )
    metadata_filter_max_documents: int = Field(
        1000,
        ge=1,
        le=10000,
        description="Most documents a search's `metadata` filter may match (their ids become one "
        "filter of the vector store); more: 400 `metadata_filter_too_broad`.",
    )

    @model_validator(mode="after")
    def _open_only_on_loopback(self) -> ApiSettings:
        if self.auth == "open" and not is_loopback(self.host):
            raise ValueError(
                f"auth=open (no API keys) is for loopback addresses only, not {self.host!r}: "
                "use auth=keys (the default) to listen there"
            )
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
