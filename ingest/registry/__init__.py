"""The registry of documents and ingestion jobs, and the durable job queue.

    registry = await Registry.connect(settings.registry_url)   # migrates to the newest schema
    document, job, created = await registry.add_document(...)
    job = await registry.claim_job(owner="worker-1", lease_seconds=30)

Modules: ``tables`` (schema), ``migrate`` (alembic, run programmatically), ``engine`` (SQLite and
PostgreSQL set up for concurrent use), ``records`` (what is handed out, and its API shape),
``queue`` (claims, leases, retries), ``registry`` (documents), ``metadata`` (documents' metadata:
filters and lookups for searches), ``keys`` (API keys), ``errors``.
"""

from ingest.registry.engine import create_registry_engine
from ingest.registry.errors import (
    InvalidCursor,
    JobNotFound,
    JobNotRetryable,
    RegistryUnavailable,
)
from ingest.registry.keys import SCOPES, ApiKey, KeyStore, Scope
from ingest.registry.metadata import MetadataStore
from ingest.registry.migrate import migrate
from ingest.registry.queue import LEASE_EXPIRED, JobQueue, backoff_delay
from ingest.registry.records import (
    DocumentRecord,
    DocumentStatus,
    JobRecord,
    JobState,
    document_id,
)
from ingest.registry.registry import UNSET, Registry
from ingest.registry.revocations import RevocationWatch
from ingest.registry.usage import Prices, UsageRow, UsageStore, total

__all__ = [
    "LEASE_EXPIRED",
    "SCOPES",
    "UNSET",
    "ApiKey",
    "DocumentRecord",
    "DocumentStatus",
    "InvalidCursor",
    "JobNotFound",
    "JobNotRetryable",
    "JobQueue",
    "JobRecord",
    "JobState",
    "KeyStore",
    "MetadataStore",
    "Prices",
    "Registry",
    "RegistryUnavailable",
    "RevocationWatch",
    "Scope",
    "UsageRow",
    "UsageStore",
    "backoff_delay",
    "create_registry_engine",
    "document_id",
    "migrate",
    "total",
]
