"""Documents' metadata where it is kept once: the registry's ``documents.metadata`` column.

    catalog = MetadataStore(registry.engine)
    ids = await catalog.matching("docs", {"team": "geo", "source.kind": "pdf"}, limit=1001)
    by_id = await catalog.metadata_of(ids)

This is the searcher's :class:`rag.core.search.DocumentCatalog`: a search's metadata filter
becomes the ids of the documents that meet it, and the hits of a page get their metadata in one
query. A condition means the same on SQLite and PostgreSQL:

- its key is a path of object keys joined by dots (``"source.kind"`` is
  ``metadata["source"]["kind"]``), as the store's payload filters read it when every chunk
  carried a copy of the metadata;
- its value matches a field equal to it, or an array field that holds it; types stay apart
  (``"1"``, ``1`` and ``true`` are three values), and ``1`` matches ``1.0``.

Every condition must hold. SQLite walks to the field with ``json_each``, comparing keys as text
(so a key may hold any character, quotes included); PostgreSQL tests ``jsonb`` containment
(``@>``), once for the value and once for an array holding it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    true,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.selectable import TableValuedAlias

from ingest.registry.engine import is_sqlite
from ingest.registry.store import Store
from ingest.registry.tables import documents
from rag.core.search import MetadataValue


class MetadataStore(Store):
    async def matching(
        self,
        collection: str,
        conditions: Mapping[str, MetadataValue],
        *,
        among: Sequence[str] = (),
        limit: int,
    ) -> list[str]:
        """Ids of at most ``limit`` documents of ``collection`` (of ``among``, when given) whose
        metadata meets every condition."""
        match = _sqlite_condition if is_sqlite(self.engine) else _postgres_condition
        query = select(documents.c.id).where(
            documents.c.collection == collection,
            *(match(key.split("."), value) for key, value in conditions.items()),
        )
        if among:
            query = query.where(documents.c.id.in_(list(among)))
        async with self._read() as conn:
            return list((await conn.execute(query.limit(limit))).scalars())

    async def metadata_of(self, document_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The metadata of each of these documents that exists, by id (one query)."""
        if not document_ids:
            return {}
        query = select(documents.c.id, documents.c.metadata).where(
            documents.c.id.in_(list(document_ids))
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return {row.id: dict(row.metadata or {}) for row in rows}


def _postgres_condition(path: list[str], value: MetadataValue) -> ColumnElement[bool]:
    def nested(leaf: object) -> object:
        for key in reversed(path):
            leaf = {key: leaf}
        return leaf

    column = type_coerce(documents.c.metadata, JSONB)
    return or_(
        column.contains(type_coerce(nested(value), JSONB)),
        column.contains(type_coerce(nested([value]), JSONB)),
    )


def _sqlite_condition(path: list[str], value: MetadataValue) -> ColumnElement[bool]:
    """``EXISTS`` a walk down ``path`` through objects (one ``json_each`` a level) to a field
    that is ``value`` or an array holding it."""
    levels = []
    source: ColumnElement[Any] = documents.c.metadata
    where: list[ColumnElement[bool]] = []
    for depth, key in enumerate(path):
        level = func.json_each(source).table_valued("key", "value", "type", "atom").alias()
        levels.append(level)
        where.append(level.c.key == key)
        if depth < len(path) - 1:  # descend into objects only, never into a scalar's text
            where.append(level.c.type == "object")
            source = case((level.c.type == "object", level.c.value), else_=literal("{}"))
    field = levels[-1]
    elements = func.json_each(
        case((field.c.type == "array", field.c.value), else_=literal("[]"))
    ).table_valued("type", "atom")
    element = elements.alias()
    held = select(literal(1)).select_from(element).where(_sqlite_equals(element, value))
    where.append(or_(_sqlite_equals(field, value), held.exists()))
    walk: FromClause = levels[0]
    for level in levels[1:]:  # each level's json_each reads the one above: a lateral join
        walk = walk.join(level, true())
    return select(literal(1)).select_from(walk).where(and_(*where)).exists()


def _sqlite_equals(row: TableValuedAlias, value: MetadataValue) -> ColumnElement[bool]:
    """Whether a ``json_each`` row (its ``type`` and ``atom``) is ``value``, of its type."""
    kind, atom = row.c.type, row.c.atom
    if isinstance(value, bool):
        return kind == ("true" if value else "false")
    if isinstance(value, int):
        return and_(kind.in_(["integer", "real"]), atom == value)
    return and_(kind == "text", atom == value)
