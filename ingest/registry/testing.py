"""Helpers for tests that need a real registry database (SQLite file or PostgreSQL).

    async with scratch_database(url) as db:      # PostgreSQL: a fresh schema, dropped after
        registry = Registry(db.engine)
        ...
        await clear(db.engine)                     # empty the tables between tests

Several test modules (and test runs) may share one PostgreSQL database: each scratch database is a
schema of its own, ``rag_test_<random>``, reached through ``search_path``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ingest.registry.engine import create_registry_engine, writer
from ingest.registry.migrate import migrate
from ingest.registry.tables import api_keys, documents, jobs, usage

PROBE_SECONDS = 3.0
ENABLE_POSTGRES = (
    "set RAG_TEST_POSTGRES_URL=postgresql+asyncpg://USER@HOST:PORT/DATABASE to a PostgreSQL "
    "the tests may create schemas in"
)


@dataclass(frozen=True)
class ScratchDatabase:
    url: str
    schema: str | None
    engine: AsyncEngine

    def another_engine(self) -> AsyncEngine:
        """A second, independent engine on the same database (as another process would have)."""
        return create_registry_engine(self.url, schema=self.schema)


async def postgres_unreachable(url: str) -> str | None:
    """Why the PostgreSQL at ``url`` cannot be used (``None`` when it can)."""
    engine = create_async_engine(url)
    try:
        async with asyncio.timeout(PROBE_SECONDS), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (OSError, TimeoutError, SQLAlchemyError) as exc:
        where = make_url(url).render_as_string(hide_password=True)
        return f"PostgreSQL at {where} unreachable ({type(exc).__name__}: {exc}); {ENABLE_POSTGRES}"
    finally:
        await engine.dispose()
    return None


@asynccontextmanager
async def scratch_database(url: str) -> AsyncIterator[ScratchDatabase]:
    """A migrated registry database at ``url``: the SQLite file as given, or on PostgreSQL a new
    schema that is dropped afterwards."""
    schema = None
    if make_url(url).get_backend_name() != "sqlite":
        schema = f"rag_test_{secrets.token_hex(6)}"
    await migrate(url, schema=schema)
    engine = create_registry_engine(url, schema=schema)
    try:
        yield ScratchDatabase(url, schema, engine)
    finally:
        await engine.dispose()
        if schema is not None:
            admin = create_async_engine(url)
            try:
                async with admin.begin() as conn:
                    await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await admin.dispose()


async def clear(engine: AsyncEngine) -> None:
    """Delete every job, document and API key."""
    async with writer(engine).begin() as conn:
        await conn.execute(delete(api_keys))
        await conn.execute(delete(usage))
        await conn.execute(delete(jobs))
        await conn.execute(delete(documents))


class ManualClock:
    """A clock that moves only when told to: ``clock()`` is the time, ``advance(s)`` moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.moment = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> datetime:
        self.moment += timedelta(seconds=seconds)
        return self.moment
