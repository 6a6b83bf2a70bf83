"""Token usage per API key, collection and day, kept in the registry database.

    await usage.record(key_id="…", key_name="team-a", collection="docs",
                       prompt_tokens=412, completion_tokens=37)
    rows = await usage.totals(since=date(2026, 12, 1), key_id=None)

One row per (day, key, collection), added to in place (``INSERT ... ON CONFLICT DO UPDATE`` on
both SQLite and PostgreSQL, so concurrent replicas never lose a count). The figures are
llama-server's own (``tokens_evaluated``, ``tokens_predicted`` of the answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ingest.registry.engine import is_sqlite
from ingest.registry.store import Store
from ingest.registry.tables import usage


@dataclass(frozen=True)
class UsageRow:
    day: str
    key_id: str
    key_name: str
    collection: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    embedding_tokens: int = 0  # the usage table's column since migration 0004

    def to_api(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "key_id": self.key_id,
            "key_name": self.key_name,
            "collection": self.collection,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


class UsageStore(Store):
    async def record(
        self,
        *,
        key_id: str,
        key_name: str,
        collection: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        values = {
            "day": self.now().date().isoformat(),
            "key_id": key_id,
            "key_name": key_name,
            "collection": collection,
            "requests": 1,
            "prompt_tokens": max(0, prompt_tokens),
            "completion_tokens": max(0, completion_tokens),
        }
        build = sqlite_insert if is_sqlite(self.engine) else pg_insert
        stmt = build(usage).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["day", "key_id", "collection"],
            set_={
                "requests": usage.c.requests + 1,
                "prompt_tokens": usage.c.prompt_tokens + stmt.excluded.prompt_tokens,
                "completion_tokens": usage.c.completion_tokens + stmt.excluded.completion_tokens,
                "key_name": stmt.excluded.key_name,
            },
        )
        async with self._write() as conn:
            await conn.execute(stmt)

    async def tokens_today(self, key_id: str) -> int:
        """Prompt and completion tokens the key used today (UTC), on every replica."""
        day = self.now().date().isoformat()
        query = select(usage.c.prompt_tokens, usage.c.completion_tokens).where(
            usage.c.day == day, usage.c.key_id == key_id
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return sum(int(p) + int(c) for p, c in rows)

    async def totals(
        self, *, since: date | None = None, key_id: str | None = None
    ) -> list[UsageRow]:
        """Rows by day, key and collection, oldest first; ``key_id`` limits them to one key."""
        query = select(usage).order_by(usage.c.day, usage.c.key_name, usage.c.collection)
        if since is not None:
            query = query.where(usage.c.day >= since.isoformat())
        if key_id is not None:
            query = query.where(usage.c.key_id == key_id)
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [UsageRow(**dict(row)) for row in rows]
