"""Migrating a qdrant-client local-mode folder into the embedded store: on start and by
``rag store migrate``, counts checked, nothing lost when interrupted, the same search results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rag.cli.main import app
from rag.core.runtime.paths import EMBEDDING_DIMENSIONS as DIM
from rag.core.settings import Settings
from rag.core.store.migrate import MARKER, migrate_local, staging_path
from rag.core.vectorstore import ChunkPoint, VectorStore

WORDS = [f"term{n}" for n in range(50)]


def _points(document_id: str, n: int, seed: int) -> list[ChunkPoint]:
    rng = np.random.default_rng(seed)
    return [
        ChunkPoint(
            document_id, i, rng.normal(size=DIM).tolist(), " ".join(rng.choice(WORDS, size=12)),
            {"filename": f"{document_id}.txt", "page": None, "metadata": {"n": i}},
        )
        for i in range(n)
    ]  # fmt: skip


async def _local_folder(data_dir: Path) -> None:
    local = VectorStore.open(
        url=None, path=str(data_dir / "qdrant"), timeout=30, dimensions=DIM, backend="local"
    )
    try:
        for collection, docs in (("alpha", 3), ("beta", 1)):
            await local.ensure_collection(collection)
            for d in range(docs):
                await local.upsert(collection, _points(f"{collection}-{d}", 250, seed=d))
    finally:
        await local.close()


def _settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, _env_file=None)  # type: ignore[call-arg]


async def _answers(store: VectorStore) -> list[list[tuple[str, float]]]:
    rng = np.random.default_rng(5)
    out = []
    for retrieval in ("dense", "sparse", "hybrid"):
        hits = await store.search(
            "alpha", vector=rng.normal(size=DIM).tolist(), text="term3 term7 term11", top_k=10,
            retrieval=retrieval,  # type: ignore[arg-type]
        )  # fmt: skip
        out.append([(h.id, round(h.score, 4)) for h in hits])
    return out


async def test_migration_on_start_keeps_every_point_and_answer(tmp_path: Path) -> None:
    await _local_folder(tmp_path)
    local = VectorStore.from_settings(
        _settings(tmp_path).model_copy(update={"vector_store": "local"}), dimensions=DIM
    )
    try:
        expected = await _answers(local)
    finally:
        await local.close()

    store = VectorStore.from_settings(_settings(tmp_path), dimensions=DIM)  # edge: migrates
    try:
        assert store.name == "edge"
        assert sorted(await store.collections()) == ["rag_alpha", "rag_beta"]
        assert await store.count("alpha") == 750
        assert await store.count("beta") == 250
        assert await store.count("alpha", "alpha-1") == 250
        answers = await _answers(store)
        assert answers[0] == expected[0]  # dense: the same ids and scores
        assert sorted(s for _, s in answers[1]) == sorted(s for _, s in expected[1])
        (hit,) = await store.search("beta", vector=None, text="term1", top_k=1, retrieval="sparse")
        assert hit.payload["page"] is None and hit.payload["filename"] == "beta-0.txt"
    finally:
        await store.close()
    assert (tmp_path / "edge" / MARKER).exists()
    assert (tmp_path / "qdrant" / "collection").is_dir()  # the source is left as it was


async def test_an_interrupted_migration_loses_nothing_and_runs_again(tmp_path: Path) -> None:
    await _local_folder(tmp_path)
    seen = []

    def interrupt(collection: str, done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == 2:
            raise KeyboardInterrupt  # as if the process were stopped half-way

    with pytest.raises(KeyboardInterrupt):
        migrate_local(tmp_path / "qdrant", tmp_path / "edge", dimensions=DIM, progress=interrupt)
    assert not (tmp_path / "edge").exists()  # nothing half-made where the service looks
    assert staging_path(tmp_path / "edge").exists()

    result = CliRunner().invoke(app, ["store", "migrate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "migrated 1000 points" in result.output
    assert not staging_path(tmp_path / "edge").exists()
    store = VectorStore.from_settings(_settings(tmp_path), dimensions=DIM)
    try:
        assert await store.count("alpha") == 750
    finally:
        await store.close()
    again = CliRunner().invoke(app, ["store", "migrate", "--data-dir", str(tmp_path)])
    assert again.exit_code == 1  # the target exists: never overwritten
    assert "exists already" in again.output


def test_migrate_without_local_data_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["store", "migrate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "nothing to migrate" in result.output
