"""Ingestion throughput, end to end, against the raw embedding throughput of the same server.

    .venv/bin/python -m bench.ingest [--docs 300] [--repeats 3]

1. starts one embedding llama-server (the embedded default's flags) and the service as a real
   process (`rag run` with that server as its embedding pool, no generation children);
2. uploads ``--docs`` SciFact abstracts as text files and waits until every job has succeeded:
   chunks per second from the first upload to the last chunk searchable;
3. embeds the very same chunk texts (read back from the service's Qdrant folder after it stops)
   directly against the llama-server with the same batch size and concurrency: the raw chunks
   per second;
4. repeats 1-3 ``--repeats`` times, each with a fresh service, and writes the ratio of the
   medians e2e / raw, and each run's ratio, to docs/benchmarks/ingest.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.service import upload, wait_ready
from rag.core.runtime.children import embedding_args
from rag.core.runtime.paths import EMBEDDING_DIMENSIONS
from rag.core.runtime.prepare import prepare_runtime
from rag.core.runtime.supervisor import ChildSpec, Supervisor, free_port
from rag.core.settings import Settings
from rag.core.vectorstore import VectorStore

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "benchmarks"
CORPUS = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=60.0, pool=60.0)


def write_corpus(folder: Path, count: int) -> list[Path]:
    files = []
    with CORPUS.open() as lines:
        for index, line in enumerate(lines):
            if index >= count:
                break
            doc = json.loads(line)
            path = folder / f"scifact-{doc['_id']}.txt"
            path.write_text(f"{doc['title']}\n\n{doc['text']}\n")
            files.append(path)
    return files


async def end_to_end(base: str, files: list[Path]) -> tuple[float, int]:
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        started = time.perf_counter()
        jobs = await upload(http, files)
        chunks = await wait_ready(http, len(jobs), interval=0.2)
    return time.perf_counter() - started, chunks


async def chunk_texts(data_dir: Path) -> list[str]:
    store = VectorStore.from_settings(
        Settings(data_dir=data_dir), dimensions=EMBEDDING_DIMENSIONS
    )  # the service's own store, closed by now
    try:
        return [str(r.payload["text"]) async for r in store.records("bench", fields=["text"])]
    finally:
        await store.close()


async def raw(url: str, texts: list[str], batch: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:

        async def one(part: list[str]) -> None:
            async with gate:
                response = await http.post(f"{url}/v1/embeddings", json={"input": part})
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(texts[i : i + batch]) for i in range(0, len(texts), batch)))
        return time.perf_counter() - started


def start_service(
    url: str, data_dir: Path, settings: Settings
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RAG_PORT": str(port),
        "RAG_DATA_DIR": str(data_dir),
        "RAG_EMBEDDING_URLS": json.dumps([url]),
        "RAG_GENERATION_SERVERS": "0",
        "RAG_LOG_LEVEL": "warning",
        "RAG_AUTH": "open",  # loopback only: the benchmark measures ingestion, not the key check
    }
    log = (data_dir / "service.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "rag", "run"], env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            pools = httpx.get(f"{base}/v1/pool", timeout=2).json()
            if any(u["state"] == "healthy" for u in pools["embedding"]["upstreams"]):
                return process, base
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the service did not start; see {data_dir / 'service.log'}")


async def main(docs: int, repeats: int) -> dict[str, Any]:
    settings = Settings()
    runtime = prepare_runtime(settings)
    batch, concurrency = settings.embedding_batch_size, settings.embedding_concurrency
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="rag-bench-ingest-") as tmp:
        work = Path(tmp)
        files = write_corpus(work, docs)
        spec = ChildSpec(
            "bench-embedding", "embedding",
            embedding_args(settings, runtime.embedding_model), free_port(),
        )  # fmt: skip
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            supervisor = Supervisor(runtime.llama_server, [spec], logs_dir=work / "logs", http=http)
            await supervisor.start()
            try:
                if not await supervisor.wait_healthy(120):
                    raise RuntimeError("the embedding server did not start")
                for repeat in range(repeats):  # a fresh service each time, then raw on its chunks
                    data_dir = work / f"data-{repeat}"
                    process, base = start_service(spec.url, data_dir, settings)
                    try:
                        e2e_seconds, chunks = await end_to_end(base, files)
                    finally:
                        process.send_signal(signal.SIGTERM)
                        process.wait(60)
                    texts = await chunk_texts(data_dir)
                    assert len(texts) == chunks, (len(texts), chunks)
                    raw_seconds = await raw(spec.url, texts, batch, concurrency)
                    runs.append({"end_to_end_seconds": e2e_seconds, "raw_seconds": raw_seconds})
            finally:
                await supervisor.stop()
    e2e_seconds = statistics.median(r["end_to_end_seconds"] for r in runs)
    raw_seconds = statistics.median(r["raw_seconds"] for r in runs)
    e2e_rate, raw_rate = chunks / e2e_seconds, chunks / raw_seconds
    return {
        "benchmark": "ingest",
        "command": f".venv/bin/python -m bench.ingest --docs {docs} --repeats {repeats}",
        "documents": docs,
        "chunks": chunks,
        "repeats": repeats,
        "end_to_end_seconds": round(e2e_seconds, 3),
        "raw_embedding_seconds": round(raw_seconds, 3),
        "end_to_end_chunks_per_second": round(e2e_rate, 2),
        "raw_chunks_per_second": round(raw_rate, 2),
        "ratio": round(e2e_rate / raw_rate, 3),
        "ratio_per_run": [round(r["raw_seconds"] / r["end_to_end_seconds"], 3) for r in runs],
        "goal": ">= 0.9",
        "batch_size": settings.embedding_batch_size,
        "concurrency": settings.embedding_concurrency,
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write(result: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        ("path", "seconds", "chunks/s"),
        ("raw llama-server /v1/embeddings", result["raw_embedding_seconds"],
         result["raw_chunks_per_second"]),
        ("upload → searchable (service)", result["end_to_end_seconds"],
         result["end_to_end_chunks_per_second"]),
    ]  # fmt: skip
    table = "\n".join(
        [f"| {a} | {b} | {c} |" for a, b, c in rows[:1]]
        + ["| --- | --- | --- |"]
        + [f"| {a} | {b} | {c} |" for a, b, c in rows[1:]]
    )
    (OUT / "ingest.md").write_text(
        f"# Ingestion throughput\n\n`{result['command']}` ({result['date_utc']}, "
        f"{result['cpus']} cores): {result['documents']} SciFact abstracts, "
        f"{result['chunks']} chunks.\n\n{table}\n\n"
        f"Medians of {result['repeats']} runs, each with a fresh service.\n\n"
        f"**Ratio end to end / raw: {result['ratio']}** (goal {result['goal']}); "
        f"each run: {', '.join(str(r) for r in result['ratio_per_run'])}.\n"
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axis = plt.subplots(figsize=(6, 3))
    rates = [result["raw_chunks_per_second"], result["end_to_end_chunks_per_second"]]
    axis.barh(["raw embedding", "end to end"], rates)
    axis.set_xlabel("chunks per second")
    axis.set_title(f"Ingestion throughput (ratio {result['ratio']})")
    figure.tight_layout()
    figure.savefig(OUT / "ingest.png", dpi=100)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="Runs; medians are reported.")
    args = parser.parse_args()
    if not 1 <= args.docs <= 1000:
        parser.error("--docs must be between 1 and 1000 (one page of GET /v1/documents)")
    outcome = asyncio.run(main(args.docs, args.repeats))
    write(outcome)
    print(json.dumps(outcome, indent=2))
