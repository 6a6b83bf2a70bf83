"""One behavioural suite for every vector store backend: the embedded store (Qdrant Edge in its
store process), qdrant-client local mode and, where Docker runs, a Qdrant server started by
testcontainers. The same calls must give the same results on each."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models

from rag.core.errors import NotFound
from rag.core.vectorstore import Backend, ChunkPoint, Hit, VectorStore, point_id

DIM = 16
TEXTS = [
    "the lighthouse keeper logs passing ships",
    "volcanoes erupt when magma rises",
    "tides follow the moon",
    "the keeper of bees harvests honey",
]
BACKENDS: list[Backend] = ["edge", "local", "server"]


def _docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if done.returncode != 0:
        return "no Docker engine is running (docker info failed)"
    return None


@pytest.fixture(scope="module")
def qdrant_server_url() -> Iterator[str]:
    problem = _docker_problem()
    if problem:
        pytest.skip(f"Qdrant server tests need Docker: {problem}")
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = DockerContainer("qdrant/qdrant:v1.12.4").with_exposed_ports(6333)
    with container:
        wait_for_logs(container, "Qdrant HTTP listening", timeout=60)
        host = container.get_container_host_ip()
        yield f"http://{host}:{container.get_exposed_port(6333)}"


Opener = Callable[[], VectorStore]


@pytest.fixture(params=BACKENDS)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the backend on the same data each time it is called (to test reopening)."""
    backend: Backend = request.param
    url = request.getfixturevalue("qdrant_server_url") if backend == "server" else None
    path = str(tmp_path / backend)

    def open_store() -> VectorStore:
        return VectorStore.open(url=url, path=path, timeout=30, dimensions=DIM, backend=backend)

    return open_store


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[VectorStore]:
    opened = opener()
    yield opened
    await opened.close()


def _points(document_id: str, *, filename: str = "f.txt", team: str = "a") -> list[ChunkPoint]:
    rng = np.random.default_rng(7)
    return [
        ChunkPoint(
            document_id=document_id,
            chunk_index=index,
            vector=rng.normal(size=DIM).tolist(),
            text=text,
            payload={"filename": filename, "page": index + 1, "metadata": {"team": team}},
        )
        for index, text in enumerate(TEXTS)
    ]


def _any(key: str, values: list[str]) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key=key, match=models.MatchAny(any=values))])


async def test_upsert_is_idempotent_and_search_finds_the_point(store: VectorStore) -> None:
    await store.ensure_collection("things")
    points = _points("doc-1")
    await store.upsert("things", points)
    await store.upsert("things", points)  # the same ids: nothing added
    assert await store.count("things") == len(TEXTS)
    hits = await store.search("things", vector=points[2].vector, text="", top_k=2)
    assert hits[0].id == point_id("doc-1", 2)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload == {
        "filename": "f.txt",
        "page": 3,
        "metadata": {"team": "a"},
        "document_id": "doc-1",
        "chunk_index": 2,
        "text": TEXTS[2],
    }


async def test_changed_content_replaces_the_points(store: VectorStore) -> None:
    await store.ensure_collection("changed")
    await store.upsert("changed", _points("doc-1"))
    changed = [
        ChunkPoint(
            "doc-1", 0, [1.0] + [0.0] * (DIM - 1), "a new first chunk", {"filename": "f.txt"}
        )
    ]
    await store.upsert("changed", changed)
    assert await store.count("changed", "doc-1") == len(TEXTS)
    hits = await store.search("changed", vector=changed[0].vector, text="", top_k=1)
    assert hits[0].id == point_id("doc-1", 0)
    assert hits[0].payload["text"] == "a new first chunk"


async def test_sparse_and_hybrid(store: VectorStore) -> None:
    await store.ensure_collection("words")
    points = _points("doc-2")
    await store.upsert("words", points)
    sparse = await store.search("words", vector=None, text="keeper", top_k=4, retrieval="sparse")
    assert {h.payload["chunk_index"] for h in sparse} == {0, 3}
    assert (
        await store.search("words", vector=None, text="the of", top_k=4, retrieval="sparse") == []
    )
    hybrid = await store.search(
        "words", vector=points[1].vector, text="magma volcanoes", top_k=1, retrieval="hybrid"
    )
    assert hybrid[0].payload["chunk_index"] == 1
    dense_only = await store.search(
        "words", vector=points[2].vector, text="the", top_k=1, retrieval="hybrid"
    )  # no query terms left: the dense list alone
    assert dense_only[0].payload["chunk_index"] == 2


@pytest.mark.parametrize("retrieval", ["dense", "sparse", "hybrid"])
async def test_filters(store: VectorStore, retrieval: str) -> None:
    await store.ensure_collection("filtered")
    await store.upsert("filtered", _points("doc-a", filename="a.txt", team="red"))
    await store.upsert("filtered", _points("doc-b", filename="b.txt", team="blue"))
    query = _points("doc-a")[0].vector

    async def found(flt: models.Filter) -> set[str]:
        hits = await store.search(
            "filtered",
            vector=query,
            text="keeper ships tides",
            top_k=20,
            filter=flt,
            retrieval=retrieval,  # type: ignore[arg-type]
        )
        return {h.payload["document_id"] for h in hits}

    assert await found(_any("document_id", ["doc-b"])) == {"doc-b"}
    assert await found(_any("filename", ["a.txt", "b.txt"])) == {"doc-a", "doc-b"}
    team = models.FieldCondition(key="metadata.team", match=models.MatchValue(value="red"))
    assert await found(models.Filter(must=[team])) == {"doc-a"}
    assert await found(models.Filter(must_not=[team])) == {"doc-b"}
    assert await found(_any("document_id", ["nobody"])) == set()
    pages = models.FieldCondition(key="page", range=models.Range(gte=2, lt=4))
    hits = await store.search(
        "filtered",
        vector=query,
        text="keeper ships tides volcanoes",
        top_k=20,
        filter=models.Filter(must=[pages, team]),
        retrieval=retrieval,  # type: ignore[arg-type]
    )
    assert {h.payload["page"] for h in hits} <= {2, 3}
    assert {h.payload["document_id"] for h in hits} == {"doc-a"}


async def test_score_threshold(store: VectorStore) -> None:
    await store.ensure_collection("threshold")
    points = _points("doc-t")
    await store.upsert("threshold", points)
    hits = await store.search(
        "threshold", vector=points[0].vector, text="", top_k=4, score_threshold=0.999
    )
    assert [h.id for h in hits] == [point_id("doc-t", 0)]


async def test_delete_tail_and_whole_document(store: VectorStore) -> None:
    await store.ensure_collection("gone")
    await store.upsert("gone", _points("doc-3"))
    await store.upsert("gone", _points("doc-4"))
    await store.delete_document("gone", "doc-3", from_index=2)
    assert await store.count("gone", "doc-3") == 2
    await store.delete_document("gone", "doc-3")
    assert await store.count("gone", "doc-3") == 0
    assert await store.count("gone") == len(TEXTS)
    hits = await store.search("gone", vector=None, text="keeper", top_k=10, retrieval="sparse")
    assert {h.payload["document_id"] for h in hits} == {"doc-4"}
    await store.delete_document("never-made", "doc-3")  # no collection: nothing to do


async def test_missing_collection(store: VectorStore) -> None:
    assert not await store.collection_exists("nothing-here")
    with pytest.raises(NotFound):
        await store.search("nothing-here", vector=[0.0] * DIM, text="x", top_k=1)


async def test_scroll_pages_through_payloads_and_vectors(store: VectorStore) -> None:
    await store.ensure_collection("scrolled")
    for n in range(5):
        await store.upsert("scrolled", _points(f"doc-{n}"))
    first = models.Filter(
        must=[models.FieldCondition(key="chunk_index", match=models.MatchValue(value=0))]
    )
    seen = [
        r async for r in store.records("scrolled", filter=first, fields=["document_id"], batch=2)
    ]
    assert sorted(r.payload["document_id"] for r in seen) == [f"doc-{n}" for n in range(5)]
    assert all(set(r.payload) == {"document_id"} and r.vector is None for r in seen)
    page, _ = await store.scroll("scrolled", limit=3, with_vectors=True)
    assert len(page) == 3
    assert all(r.vector is not None and len(r.vector) == DIM for r in page)
    assert len([r async for r in store.records("scrolled", batch=7)]) == 5 * len(TEXTS)


async def test_reopen_keeps_everything(opener: Opener) -> None:
    first = opener()
    await first.ensure_collection("kept")
    points = _points("doc-5")
    await first.upsert("kept", points)
    await first.delete_document("kept", "doc-5", from_index=3)
    await first.close()
    again = opener()
    try:
        assert "rag_kept" in await again.collections()
        assert await again.count("kept") == 3
        hits = await again.search("kept", vector=points[1].vector, text="", top_k=1)
        assert hits[0].id == point_id("doc-5", 1)
        sparse = await again.search("kept", vector=None, text="keeper", top_k=5, retrieval="sparse")
        assert [h.payload["chunk_index"] for h in sparse] == [0]
    finally:
        await again.close()


def _by_score(hits: list[Hit]) -> dict[float, set[str]]:
    """Ids grouped by score (RRF gives exact ties), without the last group (cut at top_k)."""
    groups: dict[float, set[str]] = {}
    for hit in hits:
        groups.setdefault(round(hit.score, 4), set()).add(hit.id)
    if hits:
        groups.pop(round(hits[-1].score, 4))
    return groups


async def test_the_embedded_store_and_local_mode_rank_alike(tmp_path: Path) -> None:
    """The congruence check qdrant-client runs between local mode and a server, here between
    the two embedded backends on 300 random points: the same ids in the same order."""
    rng = np.random.default_rng(11)
    words = [f"word{n}" for n in range(80)]  # many words, long texts: BM25 scores rarely tie
    points = [
        ChunkPoint(
            f"doc-{i // 10}",
            i % 10,
            rng.normal(size=DIM).tolist(),
            " ".join(rng.choice(words, size=int(rng.integers(5, 40)))),
            {"filename": f"{i % 3}.txt"},
        )
        for i in range(300)
    ]
    stores = {
        name: VectorStore.open(
            url=None, path=str(tmp_path / name), timeout=30, dimensions=DIM, backend=name
        )
        for name in ("edge", "local")
    }
    try:
        for store in stores.values():
            await store.ensure_collection("same")
            await store.upsert("same", points)
        for q in range(5):
            query = rng.normal(size=DIM).tolist()
            text = " ".join(rng.choice(words, size=3))
            flt = _any("filename", ["1.txt"]) if q % 2 else None
            for retrieval in ("dense", "sparse", "hybrid"):
                ranked = {
                    name: await store.search(
                        "same",
                        vector=query,
                        text=text,
                        top_k=10,
                        filter=flt,
                        retrieval=retrieval,  # type: ignore[arg-type]
                    )
                    for name, store in stores.items()
                }
                edge, local = ranked["edge"], ranked["local"]
                if retrieval == "hybrid":  # ties deep in the candidate lists move RRF a little
                    assert [h.score for h in edge] == pytest.approx(
                        [h.score for h in local], abs=0.01
                    )
                    assert len({h.id for h in edge} & {h.id for h in local}) >= 8
                    continue
                assert [h.score for h in edge] == pytest.approx([h.score for h in local], abs=1e-4)
                assert _by_score(edge) == _by_score(local)
    finally:
        for store in stores.values():
            await store.close()
