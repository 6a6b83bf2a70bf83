"""Schema migrations, run programmatically with alembic (``migrations/`` in this package).

``await migrate(url)`` upgrades the database to the newest revision; on an up-to-date database it
does nothing. The upgrade runs in one transaction (both backends have transactional DDL). On
PostgreSQL that transaction first takes an advisory lock, so processes starting together migrate
one after the other and the later ones find nothing to do; on SQLite ``BEGIN IMMEDIATE`` does the
same. New revisions: ``alembic -c ingest/registry/migrations/alembic.ini revision -m "..."``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from ingest.registry.engine import check_schema_name, create_registry_engine, is_sqlite, writer

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD = "head"
# One lock for every registry in the database: migrations of different schemas merely queue.
_ADVISORY_LOCK_KEY = zlib.crc32(b"rag-service registry migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def migrate(target: str | AsyncEngine, *, schema: str | None = None) -> None:
    """Upgrade the registry at ``target`` (a URL or an engine) to the newest revision.

    ``schema`` (PostgreSQL, with a URL) creates that schema if missing and migrates inside it.
    """
    if isinstance(target, str):
        engine = create_registry_engine(target, schema=schema)
        try:
            await _migrate(engine, schema)
        finally:
            await engine.dispose()
    else:
        await _migrate(target, schema)


async def _migrate(engine: AsyncEngine, schema: str | None) -> None:
    async with writer(engine).begin() as conn:
        if not is_sqlite(engine):
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY}
            )
            if schema is not None:
                await conn.exec_driver_sql(
                    f'CREATE SCHEMA IF NOT EXISTS "{check_schema_name(schema)}"'
                )
        await conn.run_sync(_upgrade)


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), HEAD)


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (``None`` before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()
