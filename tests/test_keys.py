"""The API key store and the usage store on a real SQLite file and the real PostgreSQL (its own
schema), and the admin key bootstrap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select, text

from ingest.registry import KeyStore, Registry, RevocationWatch, UsageStore
from ingest.registry.keys import hash_token
from ingest.registry.tables import api_keys
from ingest.registry.testing import ScratchDatabase, clear, scratch_database
from rag.core.errors import InvalidRequest
from rag.core.settings import Settings
from rag.service.keys import Authenticator, bootstrap_admin_key
from tests.conftest import wait_for
from tests.test_registry import BACKENDS, database_url


@pytest.fixture(scope="module", params=BACKENDS)
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> AsyncIterator[ScratchDatabase]:
    url = await database_url(request.param, tmp_path_factory.mktemp("keys"), postgres_url)
    async with scratch_database(url) as database:
        yield database


@pytest.fixture
async def keys(db: ScratchDatabase) -> KeyStore:
    await clear(db.engine)
    return KeyStore(db.engine)


async def test_a_key_is_shown_once_and_stored_only_as_its_hash(
    keys: KeyStore, db: ScratchDatabase
) -> None:
    token, key = await keys.create(name="team-a", scopes=["read"], collections=["team-a-*"])
    assert token.startswith("rag_") and len(token) >= 40
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(api_keys))).mappings().all()
    (row,) = rows
    assert row["key_hash"] == hash_token(token)
    assert token not in {str(value) for value in row.values()}  # the secret itself is nowhere
    assert "key" not in key.to_api() and token not in str(key.to_api())
    assert await keys.lookup(token) == key
    assert await keys.lookup(token + "x") is None
    assert await keys.lookup("") is None


async def test_revoked_key_stops_at_once_on_another_replica(
    keys: KeyStore, db: ScratchDatabase
) -> None:
    token, key = await keys.create(name="team-a", scopes=["read"], collections=["*"])
    other_engine = db.another_engine()  # another replica: its own engine, and its own cache
    try:
        other = Authenticator(KeyStore(other_engine), open_mode=False, cache_seconds=0)
        assert await other.authenticate(token) == key
        revoked = await keys.revoke(key.id)
        assert revoked is not None and revoked.revoked_at is not None
        assert await other.authenticate(token) is None
        assert await keys.lookup(token) is None
        assert [k.id for k in await keys.list(include_revoked=True)] == [key.id]
        assert await keys.list() == []
    finally:
        await other_engine.dispose()


async def test_the_cache_is_bounded_in_time(keys: KeyStore) -> None:
    now = [0.0]
    auth = Authenticator(keys, open_mode=False, cache_seconds=1.0, clock=lambda: now[0])
    token, key = await keys.create(name="t", scopes=["read"], collections=["*"])
    assert await auth.authenticate(token) == key
    await keys.revoke(key.id)  # through another replica: this one's cache still has it
    now[0] = 0.5
    assert await auth.authenticate(token) == key
    now[0] = 1.0
    assert await auth.authenticate(token) is None


async def test_a_revocation_empties_every_replicas_cache_at_once(
    keys: KeyStore, db: ScratchDatabase
) -> None:
    """Replicas cache keys for a minute here, yet a key revoked elsewhere (another replica's
    store, as ``rag keys revoke`` does) stops working at once: on SQLite with the next request
    (the file beside the database), on PostgreSQL as soon as the notification arrives."""
    token, key = await keys.create(name="team-a", scopes=["read"], collections=["*"])
    kept, _ = await keys.create(name="team-b", scopes=["read"], collections=["*"])
    replicas = []
    try:
        for _ in range(2):
            engine = db.another_engine()
            watch = RevocationWatch(engine)
            await watch.start()
            auth = Authenticator(
                KeyStore(engine), open_mode=False, cache_seconds=60, revocations=watch.epoch
            )
            replicas.append((engine, watch, auth))
            assert await auth.authenticate(token) == key  # cached from now on
            assert await auth.authenticate(kept) is not None
        await keys.revoke(key.id)
        for _, _, auth in replicas:
            if db.schema is None:  # SQLite: seen by the very next request
                assert await auth.authenticate(token) is None
            else:  # PostgreSQL: the notification takes a moment, far less than the cache's 60 s
                assert await wait_for(lambda a=auth: _refused(a, token), within=5.0)
            assert await auth.authenticate(kept) is not None  # the other keys still work
    finally:
        for engine, watch, _ in replicas:
            await watch.close()
            await engine.dispose()


async def _refused(auth: Authenticator, token: str) -> bool:
    return await auth.authenticate(token) is None


async def test_a_replica_that_cannot_hear_revocations_does_not_cache(
    keys: KeyStore, db: ScratchDatabase
) -> None:
    """PostgreSQL: while the listening connection is gone, every request asks the store, so a
    revocation still stops the key at once; the watch listens again afterwards."""
    if db.schema is None:
        pytest.skip("SQLite has no listening connection: the file is read on every request")
    engine = db.another_engine()
    watch = RevocationWatch(engine)
    await watch.start()
    try:
        auth = Authenticator(
            KeyStore(engine), open_mode=False, cache_seconds=60, revocations=watch.epoch
        )
        token, key = await keys.create(name="team-a", scopes=["read"], collections=["*"])
        assert await auth.authenticate(token) == key
        assert watch.epoch() == watch.epoch()  # listening: the cache is used
        pid = watch._driver.get_server_pid()
        async with db.engine.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert await wait_for(lambda: watch.epoch() != watch.epoch(), within=5.0)
        await keys.revoke(key.id)  # no notification can reach this replica now
        assert await auth.authenticate(token) is None  # it asked the store
        assert await wait_for(lambda: watch.epoch() == watch.epoch(), within=10.0)  # back
    finally:
        await watch.close()
        await engine.dispose()


async def test_bad_scopes_names_and_patterns_are_refused(keys: KeyStore) -> None:
    for scopes, collections in [
        (["root"], ["*"]),
        ([], ["*"]),
        (["read"], []),
        (["read"], ["../etc"]),
        (["read"], ["a*b"]),
        (["read"], ["x" * 70]),
    ]:
        with pytest.raises(InvalidRequest):
            await keys.create(name="t", scopes=scopes, collections=collections)
    with pytest.raises(InvalidRequest):
        await keys.create(name=" ", scopes=["read"], collections=["*"])


async def test_collection_patterns(keys: KeyStore) -> None:
    _, key = await keys.create(name="t", scopes=["write"], collections=["team-a-*", "shared"])
    assert key.may_use("team-a-docs") and key.may_use("team-a-") and key.may_use("shared")
    assert not key.may_use("team-b") and not key.may_use("shared2") and not key.may_use("team-a")
    assert key.has_scope("write") and not key.has_scope("read") and not key.has_scope("admin")
    _, admin = await keys.create(name="root", scopes=["admin"], collections=["*"])
    assert admin.has_scope("read") and admin.has_scope("write") and admin.may_use("anything")


async def test_listing_within_a_keys_collections(tmp_path: Path, db: ScratchDatabase) -> None:
    await clear(db.engine)
    registry = Registry(db.engine)
    for collection in ["team-a-x", "team-a_y", "team-aa", "teamXa-z", "shared"]:
        await registry.add_document(collection, "f.txt", "text/plain", collection * 2, 1)
    page, _ = await registry.list_documents(within=["team-a_*", "shared"], limit=100)
    # '_' in a prefix is a literal, not SQL LIKE's one-character wildcard
    assert sorted(d.collection for d in page) == ["shared", "team-a_y"]
    page, _ = await registry.list_documents(within=["team-a*"], limit=100)
    assert sorted(d.collection for d in page) == ["team-a-x", "team-a_y", "team-aa"]
    page, _ = await registry.list_documents(within=["*"], limit=100)
    assert len(page) == 5


async def test_bootstrap_generates_an_admin_key_file_once(tmp_path: Path, keys: KeyStore) -> None:
    settings = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    note = await bootstrap_admin_key(keys, settings)
    path = tmp_path / "admin.key"
    assert str(path.resolve()) in note
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    key = await keys.lookup(token)
    assert key is not None and key.has_scope("admin")
    await bootstrap_admin_key(keys, settings)  # a restart: the same key, no second one
    assert [k.id for k in await keys.list()] == [key.id]
    await keys.revoke(key.id)
    await bootstrap_admin_key(keys, settings)  # a revoked key stays revoked
    assert await keys.lookup(token) is None


async def test_bootstrap_adopts_rag_admin_key(tmp_path: Path, keys: KeyStore) -> None:
    secret = "operator-chosen-admin-key-0123456789abcdef"
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path, admin_key=SecretStr(secret), _env_file=None
    )
    assert "RAG_ADMIN_KEY" in await bootstrap_admin_key(keys, settings)
    assert not (tmp_path / "admin.key").exists()
    key = await keys.lookup(secret)
    assert key is not None and key.has_scope("admin")
    await bootstrap_admin_key(keys, settings)
    assert len(await keys.list()) == 1


def test_open_mode_is_refused_off_loopback() -> None:
    for host in ["127.0.0.1", "::1", "localhost", "127.0.0.2"]:
        assert Settings(auth="open", host=host, _env_file=None).auth == "open"  # type: ignore[call-arg]
    for host in ["0.0.0.0", "::", "10.1.2.3", "example.org"]:
        with pytest.raises(ValueError, match="loopback"):
            Settings(auth="open", host=host, _env_file=None)  # type: ignore[call-arg]


async def test_usage_rows_add_up_per_key_collection_and_day(db: ScratchDatabase) -> None:
    await clear(db.engine)
    store = UsageStore(db.engine)
    await asyncio.gather(
        *(
            store.record(key_id="a", key_name="team-a", collection="docs",
                         prompt_tokens=10, completion_tokens=n)
            for n in range(20)
        )
    )  # fmt: skip
    await store.record(
        key_id="b", key_name="team-b", collection="docs", prompt_tokens=5, completion_tokens=1
    )
    (row,) = await store.totals(key_id="a")
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (20, 200, sum(range(20)))
    assert {r.key_name for r in await store.totals()} == {"team-a", "team-b"}
    assert await store.totals(since=date(2999, 1, 1)) == []
