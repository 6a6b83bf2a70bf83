"""The registry of documents on a real SQLite file and the real PostgreSQL (its own schema)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import delete, func, inspect, select
from sqlalchemy.engine import Connection

from ingest.registry import (
    DocumentRecord,
    InvalidCursor,
    Registry,
    RegistryUnavailable,
    document_id,
    migrate,
)
from ingest.registry.migrate import alembic_config, current_revision
from ingest.registry.tables import documents, jobs, metadata
from ingest.registry.testing import (
    ManualClock,
    ScratchDatabase,
    clear,
    postgres_unreachable,
    scratch_database,
)
from rag.core.errors import InvalidRequest

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
DOCUMENT_KEYS = {
    "id", "collection", "filename", "content_type", "sha256", "status", "pages", "chunks",
    "metadata", "created_at", "error",
}  # fmt: skip
JOB_KEYS = {"id", "document_id", "state", "stage", "progress", "attempts", "error"}


async def database_url(backend: str, folder: Path, postgres_url: str) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{folder / 'registry.db'}"
    if reason := await postgres_unreachable(postgres_url):
        pytest.skip(reason)
    return postgres_url


@pytest.fixture(scope="module", params=BACKENDS)
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> AsyncIterator[ScratchDatabase]:
    url = await database_url(request.param, tmp_path_factory.mktemp("registry"), postgres_url)
    async with scratch_database(url) as database:
        yield database


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def registry(db: ScratchDatabase, clock: ManualClock) -> Registry:
    await clear(db.engine)
    return Registry(db.engine, clock=clock)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def add(registry: Registry, data: bytes, collection: str = "default") -> DocumentRecord:
    doc, _, _ = await registry.add_document(
        collection, "a.txt", "text/plain", sha(data), len(data), {"source": "test"}
    )
    return doc


# --- migrations ---------------------------------------------------------------------------------


async def test_migrate_twice_is_a_noop(db: ScratchDatabase) -> None:
    await migrate(db.engine)
    await migrate(db.url, schema=db.schema)
    async with db.engine.connect() as conn:
        assert await conn.run_sync(current_revision) == HEAD
        names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    assert {"documents", "jobs", "alembic_version"} <= names


async def test_migrations_create_exactly_the_tables_of_the_code(db: ScratchDatabase) -> None:
    def differences(sync: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(sync), metadata))

    async with db.engine.connect() as conn:
        assert await conn.run_sync(differences) == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_concurrent_migrations_of_a_fresh_database(
    backend: str, tmp_path: Path, postgres_url: str
) -> None:
    url = await database_url(backend, tmp_path, postgres_url)
    async with scratch_database(url) as database:  # a migrated, empty schema to start again in
        async with database.engine.begin() as conn:
            await conn.run_sync(lambda sync: metadata.drop_all(sync))
            await conn.exec_driver_sql("DROP TABLE alembic_version")
        await asyncio.gather(*(migrate(url, schema=database.schema) for _ in range(3)))
        async with database.engine.connect() as conn:
            assert await conn.run_sync(current_revision) == HEAD


# --- adding -------------------------------------------------------------------------------------


async def test_add_document_registers_it_with_a_queued_job(registry: Registry) -> None:
    doc, job, created = await registry.add_document(
        "manuals", "guide.pdf", "application/pdf", sha(b"pdf"), 3, {"team": "ops"}, max_attempts=4
    )
    assert created
    assert doc.id == document_id("manuals", sha(b"pdf"))
    assert len(doc.id) == 32
    assert (doc.status, doc.size, doc.metadata, doc.pages, doc.error) == (
        "queued", 3, {"team": "ops"}, None, None
    )  # fmt: skip
    assert job is not None
    assert (job.document_id, job.state, job.attempts, job.max_attempts) == (doc.id, "queued", 0, 4)
    assert doc.created_at.tzinfo is not None
    api = doc.to_api()
    assert set(api) == DOCUMENT_KEYS
    assert api["created_at"].endswith("Z")
    assert set(job.to_api()) == JOB_KEYS
    assert job.to_api()["progress"] == {"done": 0, "total": 0}
    assert await registry.get_document(doc.id) == doc
    assert await registry.get_job(job.id) == job
    assert await registry.latest_job_for(doc.id) == job


async def test_same_bytes_twice_make_one_document_and_one_job(registry: Registry) -> None:
    first, job, created = await registry.add_document(
        "default", "a.txt", "text/plain", sha(b"x"), 1, {}
    )
    again, same_job, created_again = await registry.add_document(
        "default", "renamed.txt", "text/plain", sha(b"x"), 1, {"other": True}
    )
    assert created
    assert not created_again
    assert again == first  # the first upload's name and metadata stay
    assert same_job == job  # the existing job, not a new one
    assert await registry.count_jobs() == 1


async def test_same_bytes_in_another_collection_are_another_document(registry: Registry) -> None:
    one = await add(registry, b"x", "a")
    two = await add(registry, b"x", "b")
    assert one.id != two.id
    assert await registry.count_jobs() == 2


async def test_concurrent_identical_uploads_make_one_document(registry: Registry) -> None:
    results = await asyncio.gather(
        *(
            registry.add_document("default", f"{i}.txt", "text/plain", sha(b"same"), 4, {})
            for i in range(8)
        )
    )
    assert sum(created for _, _, created in results) == 1
    assert len({doc.id for doc, _, _ in results}) == 1
    assert len({job.id for _, job, _ in results if job is not None}) == 1
    assert await registry.count_jobs() == 1


async def test_adding_bytes_of_a_failed_document_returns_it(registry: Registry) -> None:
    doc = await add(registry, b"bad")
    await registry.update_document(
        doc.id, status="failed", error={"type": "corrupt_pdf", "message": "no"}
    )
    again, job, created = await registry.add_document(
        "default", "a.txt", "text/plain", sha(b"bad"), 3, {}
    )
    assert not created
    assert again.status == "failed"
    assert again.error == {"type": "corrupt_pdf", "message": "no"}
    assert job is not None
    assert await registry.count_jobs() == 1


# --- reading, updating, deleting ----------------------------------------------------------------


async def test_missing_document_and_job_are_none(registry: Registry) -> None:
    assert await registry.get_document("0" * 32) is None
    assert await registry.get_job("nope") is None
    assert await registry.latest_job_for("0" * 32) is None
    assert await registry.update_document("0" * 32, status="ready") is None
    assert await registry.delete_document("0" * 32) is None


async def test_list_documents_in_pages_with_a_cursor(
    registry: Registry, clock: ManualClock
) -> None:
    added = []
    for i in range(7):
        added.append(await add(registry, f"doc {i}".encode(), "a" if i % 2 else "b"))
        if i != 3:  # two documents share a timestamp: the id breaks the tie
            clock.advance(1)
    seen: list[DocumentRecord] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = await registry.list_documents(limit=3, cursor=cursor)
        seen += page
        pages += 1
        if cursor is None:
            break
    assert pages == 3
    assert [d.id for d in seen] == [d.id for d in sorted(added, key=lambda d: (d.created_at, d.id))]
    in_a, _ = await registry.list_documents(collection="a", limit=50)
    assert {d.id for d in in_a} == {d.id for d in added if d.collection == "a"}
    await registry.update_document(added[0].id, status="ready", pages=2, chunks=9)
    ready, cursor = await registry.list_documents(status="ready")
    assert [d.id for d in ready] == [added[0].id]
    assert cursor is None


async def test_listing_refuses_bad_cursors_and_limits(registry: Registry) -> None:
    with pytest.raises(InvalidCursor):
        await registry.list_documents(cursor="not-a-cursor")
    with pytest.raises(InvalidRequest):
        await registry.list_documents(limit=0)
    with pytest.raises(InvalidRequest):
        await registry.list_documents(status="done")  # type: ignore[arg-type]


async def test_update_document(registry: Registry) -> None:
    doc = await add(registry, b"u")
    updated = await registry.update_document(doc.id, status="ready", pages=3, chunks=12)
    assert updated is not None
    assert (updated.status, updated.pages, updated.chunks) == ("ready", 3, 12)
    assert updated.metadata == doc.metadata
    cleared = await registry.update_document(doc.id, error=None, pages=None)
    assert cleared is not None
    assert (cleared.pages, cleared.chunks, cleared.error) == (None, 12, None)
    with pytest.raises(ValueError, match="status"):
        await registry.update_document(doc.id, status="done")  # type: ignore[arg-type]


async def test_delete_document_removes_its_jobs(registry: Registry, db: ScratchDatabase) -> None:
    doc = await add(registry, b"gone")
    kept = await add(registry, b"kept")
    job = await registry.latest_job_for(doc.id)
    assert job is not None
    deleted = await registry.delete_document(doc.id)
    assert deleted is not None
    assert deleted.id == doc.id
    assert await registry.get_document(doc.id) is None
    assert await registry.get_job(job.id) is None
    assert await registry.count_jobs() == 1
    # the foreign key cascades on its own as well (SQLite enforces foreign keys here)
    async with db.engine.begin() as conn:
        await conn.execute(delete(documents).where(documents.c.id == kept.id))
        left = await conn.execute(select(func.count()).select_from(jobs))
        assert left.scalar_one() == 0


async def test_sha256_in_use_across_collections(registry: Registry) -> None:
    one = await add(registry, b"shared", "a")
    await add(registry, b"shared", "b")
    await registry.delete_document(one.id)
    assert await registry.sha256_in_use(sha(b"shared"))
    await registry.delete_document(document_id("b", sha(b"shared")))
    assert not await registry.sha256_in_use(sha(b"shared"))


async def test_ping(registry: Registry) -> None:
    await registry.ping()


async def test_ping_of_an_unreachable_database_says_so(tmp_path: Path) -> None:
    registry = await Registry.connect(
        "postgresql+asyncpg://postgres@127.0.0.1:9/none", migrate=False
    )
    try:
        with pytest.raises(RegistryUnavailable):
            await registry.ping()
    finally:
        await registry.close()


async def test_connect_migrates_a_new_sqlite_file(tmp_path: Path) -> None:
    registry = await Registry.connect(f"sqlite+aiosqlite:///{tmp_path / 'new' / 'r.db'}")
    try:
        doc = await add(registry, b"fresh")
        assert (await registry.list_documents())[0] == [doc]
    finally:
        await registry.close()
