"""The database engine of the registry, set up for safe concurrent use on SQLite and PostgreSQL.

SQLite: the ``sqlite3`` driver's legacy transaction handling is switched off and SQLAlchemy emits
``BEGIN`` itself, so that DDL is transactional and reads are repeatable. Connections that carry
the execution option ``sqlite_begin="IMMEDIATE"`` (see :func:`writer`) begin with
``BEGIN IMMEDIATE``: they take the database's write lock before their first read, so a
read-then-write (claiming a job, adding a document) can neither interleave with another writer nor
fail half way with "database is locked". The journal is WAL (readers never wait for writers),
foreign keys are enforced, and a busy writer waits up to ``busy_timeout`` seconds for the lock.

PostgreSQL: ``schema`` puts the registry's tables in that schema (via ``search_path``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DEFAULT_BUSY_TIMEOUT = 30.0
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_CONFIGURED = "_rag_registry_configured"


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}: letters, digits and _ only")
    return schema


def create_registry_engine(
    url: str,
    *,
    schema: str | None = None,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """An :class:`AsyncEngine` for ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...``.

    For a SQLite file the parent folder is created. ``schema`` is for PostgreSQL only.
    """
    parsed = make_url(url)
    connect_args: dict[str, Any] = dict(engine_kwargs.pop("connect_args", {}))
    if parsed.get_backend_name() == "sqlite":
        if schema is not None:
            raise ValueError("schema is a PostgreSQL setting; SQLite has one schema per file")
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        connect_args.setdefault("timeout", busy_timeout)
    else:
        engine_kwargs.setdefault("pool_pre_ping", True)  # survive a database restart
        if schema is not None:
            settings = dict(connect_args.get("server_settings", {}))
            settings["search_path"] = check_schema_name(schema)
            connect_args["server_settings"] = settings
    engine = create_async_engine(url, connect_args=connect_args, **engine_kwargs)
    configure_engine(engine)
    return engine


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def configure_engine(engine: AsyncEngine) -> None:
    """Install the SQLite transaction handling described above (idempotent; no-op for others).

    Engines made by :func:`create_registry_engine` have it already; call this for an engine made
    elsewhere before its first connection.
    """
    if not is_sqlite(engine) or getattr(engine.sync_engine, _CONFIGURED, False):
        return
    setattr(engine.sync_engine, _CONFIGURED, True)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN, not the driver
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {'IMMEDIATE' if mode == 'IMMEDIATE' else 'DEFERRED'}")


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine, whose transactions take SQLite's write lock at ``BEGIN``."""
    return engine.execution_options(sqlite_begin="IMMEDIATE")
