"""The benchmark's points: real all-MiniLM-L6-v2 embeddings of SciFact, and more derived from them.

The base set is the SciFact corpus as the service chunks it (``rag eval run --dataset
../shared/data/scifact``: ~12k chunks, embedded by llama.cpp), read back once from that run's
store (``--source``, a data folder of ``rag eval``) together with the 300 test queries, embedded by
a real embedding llama-server, and cached in ``.rag-data/bench-store/scifact-minilm.npz``.

Larger sizes add derived points: each is the sum of two random base vectors plus Gaussian noise
(sigma 0.02 per dimension, about a third of the spread of one coordinate), renormalised; its
text is the first half of one parent's words and the second half of the other's, so its BM25
vector is realistic too. Derived points form documents of three chunks each.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from rag.core.runtime.children import embedding_args
from rag.core.runtime.paths import EMBEDDING_DIMENSIONS
from rag.core.runtime.prepare import prepare_runtime
from rag.core.runtime.supervisor import ChildSpec, Supervisor, free_port
from rag.core.settings import Settings
from rag.core.vectorstore import ChunkPoint, VectorStore

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".rag-data" / "bench-store" / "scifact-minilm.npz"
QUERIES = ROOT.parent / "shared" / "data" / "scifact" / "queries.jsonl"
QRELS = ROOT.parent / "shared" / "data" / "scifact" / "qrels" / "test.tsv"
NOISE = 0.02
DERIVED_CHUNKS_PER_DOCUMENT = 3
DERIVE_BATCH = 512  # numpy holds the GIL while it draws the noise: small draws
TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=60.0, pool=60.0)


@dataclass
class Base:
    vectors: np.ndarray  # float32, (n, 384), unit length
    texts: list[str]
    document_ids: list[str]
    chunk_indices: list[int]
    query_vectors: np.ndarray
    query_texts: list[str]


async def load(source: Path | None) -> Base:
    if not CACHE.exists():
        if source is None:
            raise SystemExit(f"no cache at {CACHE}: pass --source DATA_DIR of a `rag eval` run")
        await _build_cache(source)
    data = np.load(CACHE, allow_pickle=False)
    return Base(
        vectors=data["vectors"],
        texts=list(data["texts"]),
        document_ids=list(data["document_ids"]),
        chunk_indices=[int(i) for i in data["chunk_indices"]],
        query_vectors=data["query_vectors"],
        query_texts=list(data["query_texts"]),
    )


async def _build_cache(source: Path) -> None:
    settings = Settings(data_dir=source)
    store = VectorStore.from_settings(settings, dimensions=EMBEDDING_DIMENSIONS, data_dir=source)
    if not (source / "edge").exists():  # a local-mode eval folder: read it as it is
        store = VectorStore.open(
            url=None, path=str(source / "qdrant"), timeout=60,
            dimensions=EMBEDDING_DIMENSIONS, backend="local",
        )  # fmt: skip
    try:
        names = [n for n in await store.collections() if n.startswith("rag_eval-scifact")]
        counts = {n: await store.count(n.removeprefix("rag_")) for n in names}
        collection = max(counts, key=lambda n: counts[n]).removeprefix("rag_")
        records = [r async for r in store.records(collection, with_vectors=True)]
    finally:
        await store.close()
    records.sort(key=lambda r: (str(r.payload["document_id"]), int(r.payload["chunk_index"])))
    query_texts = _test_queries()
    query_vectors = await _embed(settings, query_texts)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        CACHE,
        vectors=np.asarray([r.vector for r in records], dtype=np.float32),
        texts=np.asarray([r.payload["text"] for r in records]),
        document_ids=np.asarray([r.payload["document_id"] for r in records]),
        chunk_indices=np.asarray([r.payload["chunk_index"] for r in records]),
        query_vectors=np.asarray(query_vectors, dtype=np.float32),
        query_texts=np.asarray(query_texts),
    )


def _test_queries() -> list[str]:
    judged = {line.split("\t")[0] for line in QRELS.read_text().splitlines()[1:] if line.strip()}
    texts = []
    for line in QUERIES.read_text().splitlines():
        query = json.loads(line)
        if query["_id"] in judged:
            texts.append(query["text"])
    return texts


async def _embed(settings: Settings, texts: list[str]) -> list[list[float]]:
    runtime = prepare_runtime(settings)
    spec = ChildSpec(
        "bench-store-embedding", "embedding",
        embedding_args(settings, runtime.embedding_model), free_port(),
    )  # fmt: skip
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        logs = settings.data_dir / "bench-store-logs"
        supervisor = Supervisor(runtime.llama_server, [spec], logs_dir=logs, http=http)
        await supervisor.start()
        try:
            if not await supervisor.wait_healthy(120):
                raise RuntimeError("the embedding server did not start")
            vectors: list[list[float]] = []
            for i in range(0, len(texts), 16):
                response = await http.post(
                    f"{spec.url}/v1/embeddings", json={"input": texts[i : i + 16]}
                )
                response.raise_for_status()
                vectors.extend(item["embedding"] for item in response.json()["data"])
            return vectors
        finally:
            await supervisor.stop()


class Corpus:
    """``size`` points: the base set (cut to ``size``), then derived ones, made batch by batch."""

    def __init__(self, base: Base, size: int, seed: int = 16) -> None:
        self.base = base
        self.size = size
        self.seed = seed
        self.real = min(size, len(base.texts))
        self._vectors: np.ndarray | None = None
        self._words = [t.split() for t in base.texts]
        # millions of references that live as long as the run: out of the collector's sight,
        # or each full collection walks them and stops the event loop (~140 ms, measured)
        gc.freeze()

    def vectors(self) -> np.ndarray:
        """All ``size`` vectors (float32), for exact search; made once."""
        if self._vectors is None:
            parts = [self.base.vectors[: self.real]]
            parts += [v for v, _ in self.derived_batches(texts=False)]
            self._vectors = np.concatenate(parts).astype(np.float32)
        return self._vectors

    def document_id(self, index: int) -> str:
        if index < self.real:
            return self.base.document_ids[index]
        return f"derived-{(index - self.real) // DERIVED_CHUNKS_PER_DOCUMENT}"

    def chunk_index(self, index: int) -> int:
        if index < self.real:
            return self.base.chunk_indices[index]
        return (index - self.real) % DERIVED_CHUNKS_PER_DOCUMENT

    def derived_batches(self, *, texts: bool = True) -> Iterator[tuple[np.ndarray, list[str]]]:
        """The derived points, always made DERIVE_BATCH at a time (so the same every time)."""
        batch = DERIVE_BATCH
        rng = np.random.default_rng(self.seed)
        n = len(self.base.texts)
        words = self._words
        for start in range(self.real, self.size, batch):
            count = min(batch, self.size - start)
            a, b = rng.integers(0, n, size=count), rng.integers(0, n, size=count)
            noise = rng.normal(scale=NOISE, size=(count, self.base.vectors.shape[1]))
            vectors = self.base.vectors[a] + self.base.vectors[b] + noise
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            made = []
            if texts:
                for i, j in zip(a, b, strict=True):
                    left, right = words[i], words[j]
                    made.append(" ".join(left[: len(left) // 2] + right[len(right) // 2 :]))
            yield vectors.astype(np.float32), made

    def batches(self, batch: int) -> Iterator[list[ChunkPoint]]:
        for start in range(0, self.real, batch):
            stop = min(self.real, start + batch)
            yield [
                self._point(i, self.base.vectors[i], self.base.texts[i]) for i in range(start, stop)
            ]
        index = self.real
        for vectors, texts in self.derived_batches():
            for start in range(0, len(texts), batch):
                points = []
                for vector, text in zip(
                    vectors[start : start + batch], texts[start : start + batch], strict=True
                ):
                    points.append(self._point(index, vector, text))
                    index += 1
                yield points

    def _point(self, index: int, vector: np.ndarray, text: str) -> ChunkPoint:
        source = "scifact" if index < self.real else "derived"
        return point(self.document_id(index), self.chunk_index(index), vector, text, source)


def point(
    document_id: str, chunk_index: int, vector: np.ndarray, text: str, source: str
) -> ChunkPoint:
    """A chunk as the benchmark writes it: the payload of a plain-text upload."""
    return ChunkPoint(
        document_id=document_id,
        chunk_index=chunk_index,
        vector=vector.tolist(),
        text=text,
        payload={"filename": f"{document_id}.txt", "page": None, "metadata": {"source": source}},
    )
