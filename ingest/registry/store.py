"""The connection handling shared by the registry's parts: engine, clock, transactions, and the
translation of database outages into :class:`RegistryUnavailable`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ingest.registry.engine import configure_engine, writer
from ingest.registry.errors import RegistryUnavailable

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except (OperationalError, InterfaceError, OSError, TimeoutError) as exc:
        log.warning("registry database unavailable: %s", exc)
        raise RegistryUnavailable("the registry database is unreachable or busy") from exc
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("registry database connection lost: %s", exc)
        raise RegistryUnavailable("the registry database connection was lost") from exc


class Store:
    """An engine plus a clock. Reads use plain transactions; writes use :meth:`_write`, which on
    SQLite takes the write lock at ``BEGIN`` (see :mod:`ingest.registry.engine`)."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utc_now) -> None:
        configure_engine(engine)
        self.engine = engine
        self._writer = writer(engine)
        self._clock = clock

    def now(self) -> datetime:
        moment = self._clock()
        if moment.tzinfo is None:
            raise ValueError("the registry clock must return aware datetimes")
        return moment.astimezone(UTC)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with _translated(), self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with _translated(), self._writer.begin() as conn:
            yield conn
