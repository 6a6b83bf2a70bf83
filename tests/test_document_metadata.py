"""Document metadata is kept once per document, in the registry, not in every chunk's payload.

The first half runs the registry's metadata conditions on SQLite and PostgreSQL (one table of
cases, the same answers on both); the second half runs the service end to end (the real
embedding llama-server, the embedded Qdrant Edge store, the registry on SQLite and on
PostgreSQL): points carry no metadata, a metadata filter finds exactly the chunks of the
documents that match, hits get their metadata from the registry, and a 4 KiB metadata costs the
store nothing per chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from ingest.registry import MetadataStore, Registry
from ingest.registry.testing import ScratchDatabase, clear, postgres_unreachable, scratch_database
from rag.api.app import create_app
from rag.core.search import DocumentCatalog, MetadataValue
from rag.core.settings import Settings
from rag.core.vectorstore import ChunkPoint
from rag.service.components import Components
from tests.conftest import RunningServer, serve_app, service_settings, wait_job
from tests.test_registry import BACKENDS, database_url

# --- the registry's conditions, on both databases -----------------------------------------------

DOCUMENTS: dict[str, dict[str, Any]] = {
    "a": {
        "team": "geo",
        "n": 1,
        "flag": True,
        "tags": ["x", 2, False],
        "src": {"kind": "pdf", "deep": {"k": [3]}},
        'q"k': "quote",
        "x.y": "dot",
    },
    "b": {"team": "bio", "n": 1.0, "flag": 1, "tags": "x", "src": [{"kind": "pdf"}]},
    "c": {"team": "geo", "n": "1", "flag": False, "tags": [["x"]]},
    "d": {},
}

CASES: list[tuple[dict[str, MetadataValue], set[str]]] = [
    ({"team": "geo"}, {"a", "c"}),
    ({"n": 1}, {"a", "b"}),  # 1 matches 1.0
    ({"n": "1"}, {"c"}),  # a string is not a number
    ({"flag": True}, {"a"}),  # nor is a bool
    ({"flag": 1}, {"b"}),
    ({"flag": False}, {"c"}),
    ({"tags": "x"}, {"a", "b"}),  # a field equal to it, or an array holding it
    ({"tags": 2}, {"a"}),
    ({"tags": False}, {"a"}),
    ({"src.kind": "pdf"}, {"a"}),  # dots walk into objects (not into arrays of them)
    ({"src.deep.k": 3}, {"a"}),
    ({'q"k': "quote"}, {"a"}),  # any character in a key
    ({"x.y": "dot"}, set()),  # a dotted key is a path, as the store's filters read it
    ({"src": "pdf"}, set()),
    ({"missing": 1}, set()),
    ({"team": "geo", "n": 1}, {"a"}),  # every condition must hold
]


@pytest.fixture(scope="module", params=BACKENDS)
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> AsyncIterator[ScratchDatabase]:
    url = await database_url(request.param, tmp_path_factory.mktemp("metadata"), postgres_url)
    async with scratch_database(url) as database:
        yield database


@pytest.fixture
async def documents(db: ScratchDatabase) -> dict[str, str]:
    """The documents of :data:`DOCUMENTS` in collection ``col`` (and one in ``other``): id ->
    name."""
    await clear(db.engine)
    registry = Registry(db.engine)
    names = {}
    for name, metadata in DOCUMENTS.items():
        sha = hashlib.sha256(name.encode()).hexdigest()
        doc, _, _ = await registry.add_document("col", name, "text/plain", sha, 1, metadata)
        names[doc.id] = name
    await registry.add_document("other", "a", "text/plain", "f" * 64, 1, {"team": "geo"})
    return names


@pytest.mark.parametrize(("conditions", "expected"), CASES)
async def test_metadata_conditions_mean_the_same_on_both_databases(
    db: ScratchDatabase,
    documents: dict[str, str],
    conditions: dict[str, MetadataValue],
    expected: set[str],
) -> None:
    found = await MetadataStore(db.engine).matching("col", conditions, limit=10)
    assert {documents[doc_id] for doc_id in found} == expected


async def test_matching_stays_within_its_documents_and_its_limit(
    db: ScratchDatabase, documents: dict[str, str]
) -> None:
    catalog = MetadataStore(db.engine)
    c = next(doc_id for doc_id, name in documents.items() if name == "c")
    assert await catalog.matching("col", {"team": "geo"}, among=[c], limit=10) == [c]
    assert len(await catalog.matching("col", {"team": "geo"}, limit=1)) == 1
    assert await catalog.matching("nowhere", {"team": "geo"}, limit=10) == []


async def test_metadata_of_a_page_is_one_query(
    db: ScratchDatabase, documents: dict[str, str]
) -> None:
    statements: list[str] = []

    def count(*args: Any) -> None:
        if args[2].lstrip().upper().startswith("SELECT"):  # not SQLite's BEGIN
            statements.append(args[2])

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        found = await MetadataStore(db.engine).metadata_of([*documents, "no-such-document"])
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
    assert len(statements) == 1
    assert {documents[doc_id]: metadata for doc_id, metadata in found.items()} == DOCUMENTS


# --- the service, end to end --------------------------------------------------------------------

MAX_MATCHES = 3
FACTS = [
    "Ptarmigans turn white in winter to hide in the snow.",
    "Basalt columns form when thick lava cools slowly.",
    "Moss grows on the shaded side of old stone walls.",
]


def long_text(chunks: int) -> bytes:
    """Markdown of about ``chunks`` chunks at a chunk size of 64 tokens."""
    sections = [
        f"## Part {n}\n\n"
        + " ".join(f"Observation {n}.{k} of the glacier survey." for k in range(6))
        for n in range(chunks)
    ]
    return "\n\n".join(sections).encode()


class Service:
    def __init__(self, http: httpx.AsyncClient, base: str, components: Components) -> None:
        self.http = http
        self.base = base
        self.store = components.store
        self.searcher = components.searcher

    async def ingest(
        self, name: str, data: bytes, collection: str, metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        fields = {"collection": collection}
        if metadata is not None:
            fields["metadata"] = json.dumps(metadata)
        response = await self.http.post(
            f"{self.base}/v1/documents", data=fields, files={"file": (name, io.BytesIO(data))}
        )
        assert response.status_code == 202, response.text
        (document,) = response.json()["documents"]
        job = await wait_job(self.http, self.base, document["job_id"])
        assert job["state"] == "succeeded", job
        return document  # type: ignore[no-any-return]

    async def search(self, **body: Any) -> httpx.Response:
        return await self.http.post(f"{self.base}/v1/search", json={"top_k": 100, **body})

    async def results(self, **body: Any) -> list[dict[str, Any]]:
        response = await self.search(**body)
        assert response.status_code == 200, response.text
        return response.json()["results"]  # type: ignore[no-any-return]

    async def payloads(self, collection: str) -> list[dict[str, Any]]:
        return [record.payload async for record in self.store.records(collection)]


@contextlib.asynccontextmanager
async def registry_settings(backend: str, postgres_url: str) -> AsyncIterator[dict[str, Any]]:
    """The settings of a scratch PostgreSQL schema (skipped when unreachable); none (the
    service's own SQLite file) for ``sqlite``."""
    if backend == "sqlite":
        yield {}
        return
    if reason := await postgres_unreachable(postgres_url):
        pytest.skip(reason)
    async with scratch_database(postgres_url) as database:
        yield {"database_url": database.url, "database_schema": database.schema}


@pytest.fixture(scope="module", params=BACKENDS)
async def service(
    request: pytest.FixtureRequest,
    base_settings: Settings,
    embedding_server: RunningServer,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
) -> AsyncIterator[Service]:
    async with registry_settings(request.param, postgres_url) as database:
        settings = service_settings(
            base_settings,
            tmp_path_factory.mktemp("metadata-service"),
            embedding_server,
            chunk_size_tokens=64,
            chunk_overlap_tokens=0,
            metadata_filter_max_documents=MAX_MATCHES,
            **database,
        )
        app = create_app(settings, run_workers=True)
        async with serve_app(app) as base, httpx.AsyncClient(timeout=60) as http:
            yield Service(http, base, app.state.components)


async def test_points_carry_no_metadata_and_a_filter_finds_exactly_its_chunks(
    service: Service,
) -> None:
    geo = {"team": "geo", "tags": ["ice", "rock"], "source": {"kind": "survey"}}
    a = await service.ingest("glacier.md", long_text(6), "meta", geo)
    b = await service.ingest("birds.txt", FACTS[0].encode(), "meta", {"team": "bio"})
    c = await service.ingest("stones.txt", FACTS[1].encode(), "meta")

    payloads = await service.payloads("meta")
    assert payloads and all("metadata" not in payload for payload in payloads)
    chunks_of_a = sum(payload["document_id"] == a["id"] for payload in payloads)
    assert chunks_of_a >= 5

    for conditions in ({"team": "geo"}, {"tags": "ice"}, {"source.kind": "survey"}):
        for retrieval in ("dense", "sparse", "hybrid"):
            hits = await service.results(
                query="glacier survey observation",
                collection="meta",
                filter={"metadata": conditions},
                retrieval=retrieval,
            )
            assert {hit["document_id"] for hit in hits} == {a["id"]}, (conditions, retrieval)
            if retrieval == "dense":  # every chunk has a cosine score: all of them come back
                assert len(hits) == chunks_of_a
            assert all(hit["metadata"] == geo for hit in hits)

    everything = await service.results(query="white winter birds", collection="meta")
    by_document = {hit["document_id"]: hit["metadata"] for hit in everything}
    assert by_document == {a["id"]: geo, b["id"]: {"team": "bio"}, c["id"]: {}}

    both = {"document_id": b["id"], "metadata": {"team": "geo"}}
    assert await service.results(query="birds", collection="meta", filter=both) == []
    nothing = {"metadata": {"team": "sea"}}
    assert await service.results(query="birds", collection="meta", filter=nothing) == []
    missing = await service.search(query="birds", collection="no-such", filter=nothing)
    assert missing.status_code == 404, missing.text


async def test_hits_get_their_metadata_in_one_call_per_page(service: Service) -> None:
    names = [f"fact-{n}.txt" for n in range(len(FACTS))]
    for name, fact in zip(names, FACTS, strict=True):
        await service.ingest(name, fact.encode(), "page", {"name": name})
    catalog = service.searcher.documents
    assert catalog is not None
    recorder = RecordingCatalog(catalog)
    service.searcher.documents = recorder
    try:
        hits = await service.results(query="stone lava snow", collection="page")
    finally:
        service.searcher.documents = catalog
    assert len({hit["document_id"] for hit in hits}) == len(FACTS)
    assert sorted(hit["metadata"]["name"] for hit in hits) == names
    assert recorder.calls == [("metadata_of", len(FACTS))]


async def test_a_filter_that_matches_too_many_documents_is_refused(service: Service) -> None:
    tagged = await service.ingest("tagged.txt", FACTS[2].encode(), "many", {"kind": "note"})
    for n in range(MAX_MATCHES):
        await service.ingest(
            f"more-{n}.txt", f"More {n} on moss.".encode(), "many", {"kind": "note"}
        )
    response = await service.search(
        query="moss", collection="many", filter={"metadata": {"kind": "note"}}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["reason"] == "metadata_filter_too_broad"
    narrowed = {"metadata": {"kind": "note"}, "document_id": [tagged["id"]]}
    hits = await service.results(query="moss", collection="many", filter=narrowed)
    assert {hit["document_id"] for hit in hits} == {tagged["id"]}


async def test_metadata_costs_the_store_nothing_per_chunk(service: Service) -> None:
    data = long_text(30)
    metadata = {"notes": "m" * 4000}
    assert len(json.dumps(metadata).encode()) <= 4096  # the upload limit (RAG_MAX_METADATA_BYTES)
    heavy = await service.ingest("survey.md", data, "heavy", metadata)
    await service.ingest("survey.md", data, "plain", None)  # same bytes, same name length

    heavy_payloads, plain_payloads = (
        await service.payloads("heavy"),
        await service.payloads("plain"),
    )
    assert len(heavy_payloads) == len(plain_payloads) >= 25
    assert payload_bytes(heavy_payloads) == payload_bytes(
        plain_payloads
    )  # before: + 4 KB a chunk, 100 KB here
    stored = (await service.http.get(f"{service.base}/v1/documents/{heavy['id']}")).json()
    assert stored["metadata"] == metadata  # the one copy


async def test_answers_take_the_same_metadata_filter(service: Service) -> None:
    """No generation server here: only what is decided before the model would be called."""
    wall: dict[str, MetadataValue] = {"kind": "wall"}
    await service.ingest("walls.txt", FACTS[2].encode(), "answers", {"team": "bio", **wall})
    for n in range(MAX_MATCHES):
        await service.ingest(f"wall-{n}.txt", f"Wall {n} has moss.".encode(), "answers", wall)

    async def answer(conditions: dict[str, MetadataValue]) -> httpx.Response:
        body = {"question": "Where does moss grow?", "collection": "answers"}
        return await service.http.post(
            f"{service.base}/v1/answer", json={**body, "filter": {"metadata": conditions}}
        )

    none = await answer({"team": "geo"})
    assert none.status_code == 200, none.text
    assert (none.json()["reason"], none.json()["sources"]) == ("no_relevant_sources", [])
    broad = await answer(wall)
    assert broad.status_code == 400, broad.text
    assert broad.json()["error"]["reason"] == "metadata_filter_too_broad"


def payload_bytes(payloads: list[dict[str, Any]]) -> int:
    return sum(len(json.dumps(payload).encode()) for payload in payloads)


async def test_points_written_with_a_metadata_payload_still_work(service: Service) -> None:
    """A point written before this change has a ``metadata`` payload: it is found through the
    registry's copy, and its own copy is never read."""
    old = await service.ingest("old.txt", b"Lichens survive on bare granite.", "legacy", {"v": 1})
    records = [r async for r in service.store.records("legacy", with_vectors=True)]
    assert records
    await service.store.upsert(
        "legacy",
        [
            ChunkPoint(
                document_id=old["id"],
                chunk_index=int(r.payload["chunk_index"]),
                vector=list(r.vector or []),
                text=str(r.payload["text"]),
                payload={**r.payload, "metadata": {"v": 0, "stale": True}},
            )
            for r in records
        ],
    )
    assert all("metadata" in payload for payload in await service.payloads("legacy"))
    hits = await service.results(
        query="lichens", collection="legacy", filter={"metadata": {"v": 1}}
    )
    assert [hit["metadata"] for hit in hits] == [{"v": 1}] * len(records)
    stale = {"metadata": {"stale": True}}
    assert await service.results(query="lichens", collection="legacy", filter=stale) == []


class RecordingCatalog:
    """The real catalog, with a list of the calls made to it."""

    def __init__(self, inner: DocumentCatalog) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int]] = []

    async def matching(
        self,
        collection: str,
        conditions: Mapping[str, MetadataValue],
        *,
        among: Sequence[str] = (),
        limit: int,
    ) -> list[str]:
        self.calls.append(("matching", len(conditions)))
        return await self.inner.matching(collection, conditions, among=among, limit=limit)

    async def metadata_of(self, document_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        self.calls.append(("metadata_of", len(document_ids)))
        return await self.inner.metadata_of(document_ids)
