"""The vector store's calls against Qdrant local mode and, where Docker runs, a Qdrant server
started by testcontainers: the same calls must give the same results on both."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from rag.core.vectorstore import ChunkPoint, VectorStore, point_id

DIM = 16
TEXTS = [
    "the lighthouse keeper logs passing ships",
    "volcanoes erupt when magma rises",
    "tides follow the moon",
    "the keeper of bees harvests honey",
]


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


@pytest.fixture(params=["local", "server"])
async def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[VectorStore]:
    if request.param == "server":
        url = request.getfixturevalue("qdrant_server_url")
        opened = VectorStore.open(url=url, path=None, timeout=10, dimensions=DIM)
    else:
        path = str(tmp_path_factory.mktemp("qdrant"))
        opened = VectorStore.open(url=None, path=path, timeout=10, dimensions=DIM)
    yield opened
    await opened.close()


def _points(document_id: str) -> list[ChunkPoint]:
    rng = np.random.default_rng(7)
    return [
        ChunkPoint(
            document_id=document_id,
            chunk_index=index,
            vector=rng.normal(size=DIM).tolist(),
            text=text,
            payload={"filename": "f.txt", "page": None, "metadata": {"team": "a"}},
        )
        for index, text in enumerate(TEXTS)
    ]


async def test_upsert_is_idempotent_and_search_finds_the_point(store: VectorStore) -> None:
    await store.ensure_collection("things")
    points = _points("doc-1")
    await store.upsert("things", points)
    await store.upsert("things", points)  # the same ids: nothing added
    assert await store.count("things") == len(TEXTS)
    hits = await store.search("things", vector=points[2].vector, text="", top_k=2)
    assert hits[0].id == point_id("doc-1", 2)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload["text"] == TEXTS[2]


async def test_sparse_and_hybrid(store: VectorStore) -> None:
    await store.ensure_collection("words")
    points = _points("doc-2")
    await store.upsert("words", points)
    sparse = await store.search("words", vector=None, text="keeper", top_k=4, retrieval="sparse")
    assert {h.payload["chunk_index"] for h in sparse} == {0, 3}
    hybrid = await store.search(
        "words", vector=points[1].vector, text="magma volcanoes", top_k=1, retrieval="hybrid"
    )
    assert hybrid[0].payload["chunk_index"] == 1


async def test_delete_tail_and_whole_document(store: VectorStore) -> None:
    await store.ensure_collection("gone")
    await store.upsert("gone", _points("doc-3"))
    await store.delete_document("gone", "doc-3", from_index=2)
    assert await store.count("gone", "doc-3") == 2
    await store.delete_document("gone", "doc-3")
    assert await store.count("gone", "doc-3") == 0
