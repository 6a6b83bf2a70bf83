"""Token usage per API key, collection and day, kept in the registry database, and its cost.

    await usage.record(key_id="…", key_name="team-a", collection="docs",
                       prompt_tokens=412, completion_tokens=37)
    rows = await usage.totals(since=date(2026, 12, 1), key_id=None)
    row.cost(Prices(prompt=0.5, completion=1.5, embedding=0.02))

One row per (day, key, collection), added to in place (``INSERT ... ON CONFLICT DO UPDATE`` on
both SQLite and PostgreSQL, so concurrent replicas never lose a count). The figures are
llama-server's own: ``tokens_evaluated`` and ``tokens_predicted`` of an answer, the
``usage.prompt_tokens`` of each ``/v1/embeddings`` answer (searches, answers, ingestion).
``requests`` counts searches and answers; embeddings of ingestion add tokens only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ingest.registry.engine import is_sqlite
from ingest.registry.store import Store
from ingest.registry.tables import usage

COST_DIGITS = 6
"""Decimal places of a cost (a millionth of the currency unit)."""


@dataclass(frozen=True)
class Prices:
    """What 1,000 tokens of each kind cost, in ``currency`` (the settings' ``price_*``)."""

    prompt: float = 0.0
    completion: float = 0.0
    embedding: float = 0.0
    currency: str = "USD"

    def cost(self, prompt_tokens: int, completion_tokens: int, embedding_tokens: int) -> float:
        total = (
            prompt_tokens * self.prompt
            + completion_tokens * self.completion
            + embedding_tokens * self.embedding
        )
        return round(total / 1000, COST_DIGITS)


@dataclass(frozen=True)
class UsageRow:
    day: str
    key_id: str
    key_name: str
    collection: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    embedding_tokens: int = 0

    def cost(self, prices: Prices) -> float:
        return prices.cost(self.prompt_tokens, self.completion_tokens, self.embedding_tokens)

    def to_api(self, prices: Prices | None = None) -> dict[str, Any]:
        return {
            "day": self.day,
            "key_id": self.key_id,
            "key_name": self.key_name,
            "collection": self.collection,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "embedding_tokens": self.embedding_tokens,
            "cost": self.cost(prices or Prices()),
        }


def total(rows: Iterable[UsageRow], prices: Prices | None = None) -> dict[str, Any]:
    """The sums of ``rows``, in the shape of a row's figures (requests, tokens, cost)."""
    rows = list(rows)
    prompt = sum(r.prompt_tokens for r in rows)
    completion = sum(r.completion_tokens for r in rows)
    embedding = sum(r.embedding_tokens for r in rows)
    return {
        "requests": sum(r.requests for r in rows),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "embedding_tokens": embedding,
        "cost": (prices or Prices()).cost(prompt, completion, embedding),
    }


class UsageStore(Store):
    async def record(
        self,
        *,
        key_id: str,
        key_name: str,
        collection: str,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        embedding_tokens: int = 0,
        requests: int = 1,
        day: date | None = None,
    ) -> None:
        """Add to the row of ``day`` (default: today, UTC), the key and the collection."""
        await self.add(
            [
                UsageRow(
                    day=(day or self.now().date()).isoformat(),
                    key_id=key_id,
                    key_name=key_name,
                    collection=collection,
                    requests=requests,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    embedding_tokens=embedding_tokens,
                )
            ]
        )

    async def add(self, rows: Sequence[UsageRow]) -> None:
        """Add each row's figures to the stored row of its day, key and collection, in one
        transaction (the rows must name distinct days, keys and collections)."""
        if not rows:
            return
        values = [
            {
                "day": row.day,
                "key_id": row.key_id,
                "key_name": row.key_name,
                "collection": row.collection,
                "requests": max(0, row.requests),
                "prompt_tokens": max(0, row.prompt_tokens),
                "completion_tokens": max(0, row.completion_tokens),
                "embedding_tokens": max(0, row.embedding_tokens),
            }
            for row in rows
        ]
        build = sqlite_insert if is_sqlite(self.engine) else pg_insert
        stmt = build(usage).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["day", "key_id", "collection"],
            set_={
                "requests": usage.c.requests + stmt.excluded.requests,
                "prompt_tokens": usage.c.prompt_tokens + stmt.excluded.prompt_tokens,
                "completion_tokens": usage.c.completion_tokens + stmt.excluded.completion_tokens,
                "embedding_tokens": usage.c.embedding_tokens + stmt.excluded.embedding_tokens,
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
        self,
        *,
        since: date | None = None,
        key_id: str | None = None,
        collection: str | None = None,
    ) -> list[UsageRow]:
        """Rows by day, key and collection, oldest first, from ``since`` on; ``key_id`` and
        ``collection`` limit them to one key and one collection."""
        query = select(usage).order_by(usage.c.day, usage.c.key_name, usage.c.collection)
        if since is not None:
            query = query.where(usage.c.day >= since.isoformat())
        if collection is not None:
            query = query.where(usage.c.collection == collection)
        if key_id is not None:
            query = query.where(usage.c.key_id == key_id)
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [UsageRow(**dict(row)) for row in rows]
