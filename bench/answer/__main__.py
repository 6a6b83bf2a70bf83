"""``python -m bench.answer``: time to first token of ``POST /v1/answer`` against llama-server
called directly with the same final prompt, and search latency on a collection of 10,000+ chunks.

Starts its own llama-server children (one embedding, one generation server with ``-np`` slots),
serves the app with uvicorn on a free port, fills a collection, measures, and writes
``docs/benchmarks/answer.json`` and ``docs/benchmarks/answer.md``. Every figure sits next to its
baseline from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from bench.answer.corpus import QUESTIONS, build_collection, synthetic_texts
from bench.answer.measure import search_latency, ttft_pairs
from bench.answer.report import write_report
from rag.answer import AnswerService
from rag.api.app import create_app
from rag.core.runtime.children import embedding_args, generation_args
from rag.core.runtime.prepare import prepare_runtime
from rag.core.runtime.supervisor import ChildSpec, Supervisor, free_port
from rag.core.settings import Settings
from rag.core.vectorstore import backend_of
from rag.service.components import Components

OUT = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
COLLECTION = "bench"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def children(settings: Settings, slot_dir: Path) -> AsyncIterator[tuple[str, str]]:
    runtime = prepare_runtime(settings)
    generation = (
        *generation_args(settings, runtime.generation_model),
        "--no-repack",  # a native build's AMX repacking of Q4_1 crashes on AMX CPUs
        "--slot-save-path", str(slot_dir),  # enables slot erase: cold caches for both arms
    )  # fmt: skip
    specs = [
        ChildSpec("bench-embedding", "embedding", embedding_args(settings, runtime.embedding_model),
                  free_port()),
        ChildSpec("bench-generation", "generation", generation, free_port()),
    ]  # fmt: skip
    async with httpx.AsyncClient(timeout=10) as http:
        supervisor = Supervisor(runtime.llama_server, specs, logs_dir=settings.logs_dir, http=http)
        await supervisor.start()
        try:
            if not await supervisor.wait_healthy(180):
                raise RuntimeError(f"llama-server children did not start; see {settings.logs_dir}")
            yield specs[0].url, specs[1].url
        finally:
            await supervisor.stop()


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[str, Components]]:
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped")
            await asyncio.sleep(0.05)
        services: Components = app.state.components
        for _ in range(300):
            states = [
                u["state"]
                for pool in (services.embedding_pool, services.generation_pool)
                for u in pool.status()["upstreams"]
            ]
            if all(state == "healthy" for state in states):
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"the pools did not become healthy: {states}")
        yield f"http://127.0.0.1:{port}", services
    finally:
        server.should_exit = True
        await task


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-answer-") as tmp:
        base = Settings(data_dir=Path(tmp) / "data", auth="open", _env_file=None)  # loopback
        slot_dir = Path(tmp) / "slots"
        slot_dir.mkdir()
        async with children(base, slot_dir) as (embedding_url, generation_url):
            settings = base.model_copy(
                update={
                    "embedding_urls": [embedding_url],
                    "generation_urls": [generation_url],
                    "workers": 0,
                    "answer_top_k": args.top_k,
                    "answer_max_tokens": 64,
                    "embedding_batch_size": 8,
                }
            )
            async with served(settings) as (url, services):
                log(f"service on {url}; building a collection of {args.chunks} chunks")
                corpus = await build_collection(
                    services, COLLECTION, chunks=args.chunks, unique=args.unique, log=log
                )
                service = AnswerService(
                    searcher=services.searcher,
                    pool=services.generation_pool,
                    embedder=services.embedder,
                    settings=settings,
                )
                timeout = httpx.Timeout(connect=5, read=120, write=10, pool=5)
                async with httpx.AsyncClient(timeout=timeout) as http:
                    log("time to first token: /v1/answer against llama-server directly")
                    ttft = await ttft_pairs(
                        http=http, service=service, service_url=url,
                        generation_url=generation_url, slots=settings.generation_slots,
                        collection=COLLECTION, questions=QUESTIONS[: args.questions],
                        rounds=args.rounds, warm=args.cache == "warm",
                    )  # fmt: skip
                    args.out.mkdir(parents=True, exist_ok=True)
                    (args.out / "answer.partial.json").write_text(json.dumps(ttft, indent=2))
                    log("search latency")
                    rng = random.Random(11)
                    queries = [" ".join(text.split()[2:9]) for text in synthetic_texts(args.unique)]
                    sample = rng.sample(queries, min(args.searches, len(queries)))
                    search = await search_latency(
                        http=http, service_url=url, embedding_url=embedding_url,
                        store=services.store, collection=COLLECTION, queries=sample, top_k=5,
                    )  # fmt: skip
    return {
        "benchmark": "answer",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
        "setup": {
            "generation": f"SmolLM2-135M-Instruct Q4_1, -c {base.generation_ctx} "
            f"-np {base.generation_slots} -t {base.llama_threads} --no-repack",
            "embedding": "all-MiniLM-L6-v2 f16",
            "vector_store": (
                f"vector store: {backend_of(base)} (RAG_VECTOR_STORE={base.vector_store})"
            ),
            "answer_top_k": args.top_k,
            "questions": min(args.questions, len(QUESTIONS)),
            "rounds": args.rounds,
            "prompt_cache": (
                "warm: emptied, then the exact prompt processed once per question before both arms"
                if args.cache == "warm"
                else "cold: emptied before every call of both arms"
            ),
        },
        "collection": corpus,
        "ttft": ttft,
        "search": search,
        "command": "python -m bench.answer " + " ".join(sys.argv[1:]),
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.answer", description=__doc__)
    parser.add_argument("--chunks", type=int, default=10_000, help="Points in the collection.")
    parser.add_argument(
        "--unique", type=int, default=1_000, help="Distinct texts embedded (<= chunks)."
    )
    parser.add_argument("--rounds", type=int, default=2, help="Passes over the questions.")
    parser.add_argument(
        "--questions", type=int, default=len(QUESTIONS), help="Questions used (from the start)."
    )
    parser.add_argument(
        "--cache", choices=["warm", "cold"], default="warm", help="Prompt cache of both arms."
    )
    parser.add_argument("--searches", type=int, default=300, help="Search requests timed.")
    parser.add_argument("--top-k", type=int, default=3, help="Sources per answer.")
    parser.add_argument("--out", type=Path, default=OUT, help="Where the results go.")
    parser.add_argument(
        "--from-json", type=Path, help="Write the report of an earlier run's answer.json only."
    )
    args = parser.parse_args()
    args.unique = min(args.unique, args.chunks)
    result = json.loads(args.from_json.read_text()) if args.from_json else asyncio.run(run(args))
    print(write_report(result, args.out))
    (args.out / "answer.partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
