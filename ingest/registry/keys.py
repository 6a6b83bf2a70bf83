"""API keys, kept in the registry database so that every replica sees the same ones.

    token, key = await keys.create(name="team-a", scopes=["read"], collections=["team-a-*"])
    key = await keys.lookup(token)        # None when unknown or revoked

A token is ``rag_`` and 43 characters of :func:`secrets.token_urlsafe` (256 random bits). It is
shown once, at creation; the database keeps only its SHA-256. A slow password hash (bcrypt,
argon2) exists to make guessing *low-entropy* secrets expensive; with 256 random bits there is
nothing to guess, and a fast hash lets every request be checked against the store. The lookup is
by hash (an index lookup, whose timing says something about the hash, not the token), and the
stored hash is compared again with :func:`hmac.compare_digest`.

Scopes: ``read`` (search, answers, reading documents and jobs), ``write`` (uploads, deletes,
retries), ``admin`` (everything, keys included). Collections: exact names, prefixes ending in
``*`` (``team-*``), or ``*`` for all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from ingest.registry.revocations import announce, announced
from ingest.registry.store import Store
from ingest.registry.tables import api_keys
from rag.core.collections import COLLECTION_NAME
from rag.core.errors import Conflict, InvalidRequest

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")
TOKEN_PREFIX = "rag_"
MAX_COLLECTION_PATTERNS = 100


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_patterns(patterns: Iterable[str]) -> list[str]:
    """Collection patterns as given, each a name, a ``prefix*`` or ``*``; else InvalidRequest."""
    checked = []
    for pattern in patterns:
        stem = pattern[:-1] if pattern.endswith("*") else pattern
        if pattern != "*" and not COLLECTION_NAME.match(stem):
            raise InvalidRequest(
                f"invalid collection pattern {pattern!r}: a collection name, a prefix ending "
                "in '*', or '*'"
            )
        checked.append(pattern)
    if not checked:
        raise InvalidRequest("a key needs at least one collection (or '*')")
    if len(checked) > MAX_COLLECTION_PATTERNS:
        raise InvalidRequest(f"at most {MAX_COLLECTION_PATTERNS} collection patterns per key")
    return sorted(set(checked))


def check_scopes(scopes: Iterable[str]) -> list[Scope]:
    chosen = sorted(set(scopes))
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise InvalidRequest(f"scopes must be some of {list(SCOPES)}; got {chosen}")
    return [s for s in SCOPES if s in chosen]


@dataclass(frozen=True)
class ApiKey:
    """A key as the store keeps it (never the token itself)."""

    id: str
    name: str
    prefix: str
    scopes: tuple[Scope, ...]
    collections: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None = None

    @classmethod
    def from_row(cls, row: RowMapping) -> ApiKey:
        return cls(
            id=row["id"],
            name=row["name"],
            prefix=row["prefix"],
            scopes=tuple(row["scopes"]),
            collections=tuple(row["collections"]),
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
        )

    def has_scope(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def may_use(self, collection: str) -> bool:
        return any(
            pattern == collection or (pattern.endswith("*") and collection.startswith(pattern[:-1]))
            for pattern in self.collections
        )

    @property
    def all_collections(self) -> bool:
        return "*" in self.collections

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "collections": list(self.collections),
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


class KeyStore(Store):
    """Create, list, revoke and look up keys (one table, ``api_keys``)."""

    async def create(
        self,
        *,
        name: str,
        scopes: Sequence[str],
        collections: Sequence[str],
        token: str | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key: ``(token, key)``; the token is never stored nor shown again. ``token``
        adopts one given by the operator (``RAG_ADMIN_KEY``); it must be long enough."""
        name = name.strip()
        if not 1 <= len(name) <= 128:
            raise InvalidRequest("a key's name (its team) must have 1-128 characters")
        if token is None:
            token = generate_token()
        elif len(token) < 32:
            raise InvalidRequest("a key must have at least 32 characters")
        values = {
            "id": uuid.uuid4().hex,
            "name": name,
            "prefix": token[:12],
            "key_hash": hash_token(token),
            "scopes": list(check_scopes(scopes)),
            "collections": check_patterns(collections),
            "created_at": self.now(),
            "revoked_at": None,
        }
        try:
            async with self._write() as conn:
                stmt = insert(api_keys).values(values).returning(*api_keys.c)
                row = (await conn.execute(stmt)).mappings().one()
        except IntegrityError as exc:
            raise Conflict("this key exists already") from exc
        return token, ApiKey.from_row(row)

    async def lookup(self, token: str) -> ApiKey | None:
        """The live key whose token this is; ``None`` for unknown and revoked ones."""
        digest = hash_token(token)
        async with self._read() as conn:
            query = select(api_keys).where(api_keys.c.key_hash == digest)
            row = (await conn.execute(query)).mappings().first()
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        key = ApiKey.from_row(row)
        return None if key.revoked_at is not None else key

    async def exists(self, token: str) -> bool:
        """Whether this token was ever a key (revoked ones included)."""
        async with self._read() as conn:
            query = select(api_keys.c.id).where(api_keys.c.key_hash == hash_token(token))
            return (await conn.execute(query)).first() is not None

    async def get(self, key_id: str) -> ApiKey | None:
        async with self._read() as conn:
            row = (
                (await conn.execute(select(api_keys).where(api_keys.c.id == key_id)))
                .mappings()
                .first()
            )
        return ApiKey.from_row(row) if row else None

    async def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [ApiKey.from_row(row) for row in rows]

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke the key (at once on every replica: lookups check the store, and replicas'
        caches hear of it, ``revocations.py``); ``None`` if there is no such key.
        Revoking a revoked key keeps its first revocation time."""
        async with self._write() as conn:
            stmt = (
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self.now())
            )
            await conn.execute(stmt)
            row = (
                (await conn.execute(select(api_keys).where(api_keys.c.id == key_id)))
                .mappings()
                .first()
            )
            await announce(conn)  # every replica's cache forgets its keys (revocations.py)
        announced(self.engine)
        return ApiKey.from_row(row) if row else None

    async def has_admin(self) -> bool:
        """Whether any live key has the admin scope."""
        return any("admin" in key.scopes for key in await self.list())
