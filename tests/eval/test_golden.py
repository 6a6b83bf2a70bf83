"""The golden set through the real path (llama-server, pipeline, Qdrant local mode) with floors.

A change that makes retrieval on the project's own questions worse than these floors fails CI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from eval.datasets import Dataset, load_dataset
from eval.report import build_report, load_report, write_report
from eval.runner import RunOptions, RunResult, run_evaluation
from eval.runtime import EmbeddingService, embedding_service
from eval.truncation import TruncatingEmbedder
from rag.core.embeddings import Embedder
from rag.core.runtime.paths import EMBEDDING_DIMENSIONS
from rag.core.settings import Settings
from rag.core.vectorstore import Retrieval, VectorStore
from tests.conftest import RunningServer

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[2] / "eval" / "golden"
FLOORS = {"ndcg@10": 0.9, "mrr@10": 0.9, "recall@10": 1.0, "map": 0.9}


@pytest.fixture(scope="module")
def golden() -> Dataset:
    return load_dataset(GOLDEN)


@pytest.fixture(scope="module")
async def service(
    base_settings: Settings, embedding_server: RunningServer
) -> AsyncIterator[EmbeddingService]:
    async with embedding_service(base_settings, urls=[embedding_server.url]) as running:
        yield running


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[VectorStore]:
    path = tmp_path_factory.mktemp("eval-qdrant")
    opened = VectorStore.open(url=None, path=str(path), timeout=10, dimensions=EMBEDDING_DIMENSIONS)
    yield opened
    await opened.close()


async def _run(
    golden: Dataset, settings: Settings, service: EmbeddingService, store: VectorStore,
    options: RunOptions,
) -> RunResult:  # fmt: skip
    with ProcessPoolExecutor(1) as executor:
        return await run_evaluation(
            golden, settings=settings, options=options, store=store, upstream=service.pool,
            model=service.model, executor=executor,
        )  # fmt: skip


@pytest.mark.parametrize("retrieval", ["dense", "sparse", "hybrid"])
async def test_golden_set_stays_above_its_floors(
    golden: Dataset, base_settings: Settings, service: EmbeddingService, store: VectorStore,
    retrieval: Retrieval, tmp_path: Path,
) -> None:  # fmt: skip
    options = RunOptions.from_settings(base_settings, retrieval=retrieval)
    result = await _run(golden, base_settings, service, store, options)
    assert result.ingestion.failed == {}
    report = build_report(result, settings_snapshot={})
    for name, floor in FLOORS.items():
        assert report["metrics"][name] >= floor, (name, report["metrics"])
    path = write_report(report, tmp_path)
    assert load_report(path)["metrics"] == report["metrics"]
    assert path.with_suffix(".md").read_text().startswith("# Evaluation")


async def test_second_run_with_same_settings_skips_ingestion(
    golden: Dataset, base_settings: Settings, service: EmbeddingService, store: VectorStore
) -> None:
    options = RunOptions.from_settings(base_settings, chunking="document", truncate=True)
    first = await _run(golden, base_settings, service, store, options)
    second = await _run(golden, base_settings, service, store, options)
    assert first.collection == second.collection
    assert second.ingestion.ingested == 0
    assert second.ingestion.skipped == len(golden.corpus)
    assert second.ingestion.points == first.ingestion.chunks
    other = RunOptions.from_settings(base_settings, chunk_size_tokens=120)
    assert (await _run(golden, base_settings, service, store, other)).collection != first.collection


async def test_changed_documents_are_ingested_again(
    golden: Dataset, base_settings: Settings, service: EmbeddingService, store: VectorStore
) -> None:
    options = RunOptions.from_settings(base_settings, chunking="document", truncate=True)
    await _run(golden, base_settings, service, store, options)
    doc = golden.corpus["models.csv"]
    changed = replace(doc, text=doc.text + "bge-small,embedding,33 million,GGUF f16,MIT\n")
    edited = replace(golden, corpus={**golden.corpus, doc.id: changed})
    again = await _run(edited, base_settings, service, store, options)
    assert (again.ingestion.ingested, again.ingestion.skipped) == (1, len(golden.corpus) - 1)
    fewer = replace(golden, corpus={k: v for k, v in golden.corpus.items() if k != doc.id})
    assert (await _run(fewer, base_settings, service, store, options)).ingestion.removed == 1


async def test_truncation_embeds_the_first_tokens_like_sentence_transformers(
    service: EmbeddingService,
) -> None:
    plain = Embedder(service.pool)
    cut = TruncatingEmbedder(service.pool, max_tokens=16)
    short = "Slots split the context evenly."
    long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    long += "fifteen sixteen seventeen eighteen nineteen twenty"
    (ids,) = await cut.token_ids([long])
    assert len(ids) > 16
    head = await service.pool.request("POST", "/detokenize", json={"tokens": ids[1:15]})
    vectors = np.asarray(
        await plain.embed([short, head.json()["content"]]) + await cut.embed([short, long])
    )
    assert float(vectors[0] @ vectors[2]) > 0.99999  # within the limit: unchanged
    assert float(vectors[1] @ vectors[3]) > 0.99999  # beyond it: the first 14 tokens + specials
    assert await cut.token_counts([long]) == [14]
