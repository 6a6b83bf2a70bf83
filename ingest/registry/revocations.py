"""A revoked key stops working at once on every replica, although each replica caches the keys
it looked up.

Every revocation (``KeyStore.revoke``: the admin route of any replica, or ``rag keys revoke``)
leaves a trace that replicas can see without a query of their own:

- PostgreSQL: ``NOTIFY rag_api_keys_revoked`` in the revoking transaction, so it is sent when
  that commits; each replica holds one connection that listens (:class:`RevocationWatch`) and
  counts what it hears. While that connection is lost, the watch says "changed" on every call,
  so that replica's cache is not used at all (each request asks the store) until it listens
  again (it reconnects with backoff).
- SQLite (replicas on one machine, one database file): one byte appended to
  ``<database>-revocations`` after the revoking transaction commits; the watch compares the
  file's size and modification time (one ``stat``, a few microseconds).

``Authenticator`` (``rag/service/keys.py``) reads :meth:`RevocationWatch.epoch` on each request and
empties its cache when it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ingest.registry.engine import is_sqlite

log = logging.getLogger(__name__)

CHANNEL = "rag_api_keys_revoked"


def marker_file(engine: AsyncEngine) -> Path | None:
    """The file a SQLite registry's revocations touch (``None``: not a file database)."""
    if not is_sqlite(engine):
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database).with_name(Path(database).name + "-revocations")


async def announce(conn: AsyncConnection) -> None:
    """In the revoking transaction: tell every listening replica, when it commits."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"NOTIFY {CHANNEL}"))


def announced(engine: AsyncEngine) -> None:
    """After the revoking transaction committed: the SQLite trace."""
    marker = marker_file(engine)
    if marker is not None:
        with marker.open("ab") as file:
            file.write(b"\n")


class RevocationWatch:
    """What a replica knows of revocations: :meth:`epoch` changes whenever one happened."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._marker = marker_file(engine)
        self._heard = 0
        self._listening = False
        self._conn: AsyncConnection | None = None
        self._driver: Any = None
        self._closed = False
        self._reconnect: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.engine.dialect.name == "postgresql":
            await self._listen()

    async def _listen(self) -> None:
        self._conn = await self.engine.connect()
        raw = await self._conn.get_raw_connection()
        self._driver = raw.driver_connection  # asyncpg's connection
        await self._driver.add_listener(CHANNEL, self._heard_one)
        self._driver.add_termination_listener(self._lost)
        self._listening = True

    def _heard_one(self, *_: object) -> None:
        self._heard += 1

    def _lost(self, *_: object) -> None:
        if self._listening:
            log.warning("lost the connection that hears key revocations: key cache off")
        self._listening = False
        if not self._closed and (self._reconnect is None or self._reconnect.done()):
            self._reconnect = asyncio.get_running_loop().create_task(self._come_back())

    async def _come_back(self, delay: float = 0.5) -> None:
        while not self._closed:
            await asyncio.sleep(delay)
            await self._drop()
            try:
                await self._listen()
            except Exception as exc:  # the database is still away: try again later
                log.info("key revocations: listening failed (%s); trying again", exc)
                delay = min(delay * 2, 30.0)
            else:
                log.info("key revocations: listening again; key cache on")
                return

    def epoch(self) -> object:
        """Changes after every revocation. ``object()`` (never equal to anything) when
        revocations cannot be heard: a PostgreSQL watch that is not listening."""
        if self._marker is not None:
            try:
                stat = self._marker.stat()
            except FileNotFoundError:
                return (0, 0)
            return (stat.st_size, stat.st_mtime_ns)
        if self.engine.dialect.name == "postgresql":
            return self._heard if self._listening else object()
        return 0  # an in-memory SQLite database: one process, which clears its own cache

    async def close(self) -> None:
        self._closed = True
        self._listening = False
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        await self._drop()

    async def _drop(self) -> None:
        if self._driver is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._driver.remove_listener(CHANNEL, self._heard_one)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = self._driver = None
