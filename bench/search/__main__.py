"""Search latency while documents are being ingested, against the same service idle.

    .venv/bin/python -m bench.search [--docs 200] [--variants lane,no-lane,lane-shared]

For each variant, a fresh service (``rag run``, the embedded default: its own embedding
llama-server children, no generation servers) as a real process:

1. ingests ``--docs`` SciFact abstracts (the collection searched; not measured);
2. idle: ``--searches`` sequential ``POST /v1/search`` calls (SciFact queries, a short pause
   between them, as an interactive user would send);
3. loaded: uploads ``--docs`` more abstracts (from a second process, polling one listing every
   0.5 s) and searches the same way until every one of them is searchable; only searches that
   started while ingestion was under way count;
4. idle again (the drift check: it should match step 2).

Variants: ``lane`` is the default (the query lane with one embedding child reserved for
queries); ``lane-shared`` the lane without servers of its own (``RAG_EMBEDDING_QUERY_SERVERS=0``:
queries skip the ingestion queue but share its llama-server); ``no-lane`` the old single queue
(``RAG_EMBEDDING_QUERY_LANE=false``). Each figure is a ratio against the idle baseline of the
same variant in the same run. Writes docs/benchmarks/search-lane.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx

from bench.ingest.__main__ import write_corpus
from bench.pool.common import machine, stop_on_sigterm, summary
from bench.search.ingestion import TIMEOUT, drive_ingestion
from bench.service import PAGE, stop_service, upload, wait_ready
from rag.core.runtime.supervisor import free_port

OUT = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
QUERIES = Path(__file__).resolve().parents[3] / "shared" / "data" / "scifact" / "queries.jsonl"
GOAL = 1.5
VARIANTS: dict[str, dict[str, str]] = {
    "lane": {},
    "lane-shared": {"RAG_EMBEDDING_QUERY_SERVERS": "0"},
    "no-lane": {"RAG_EMBEDDING_QUERY_LANE": "false"},
}


def queries() -> list[str]:
    with QUERIES.open() as lines:
        return [json.loads(line)["text"] for line in lines]


def start_service(
    data_dir: Path, env_overrides: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RAG_PORT": str(port),
        "RAG_DATA_DIR": str(data_dir),
        "RAG_GENERATION_SERVERS": "0",
        "RAG_LOG_LEVEL": "warning",
        "RAG_AUTH": "open",  # loopback only: the benchmark measures search, not the key check
        **env_overrides,
    }
    log = (data_dir / "service.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "rag", "run"], env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    with httpx.Client(base_url=base, timeout=2) as http:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                children = http.get("/v1/runtime").json()["children"]
                pools = http.get("/v1/pool").json()
                if (
                    children
                    and all(c["state"] == "healthy" for c in children)
                    and any(u["state"] == "healthy" for u in pools["embedding"]["upstreams"])
                ):
                    time.sleep(1.0)  # a poll interval or two: every pool has seen its child
                    return process, base
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the service did not start; see {data_dir / 'service.log'}")


class Searches:
    """Sequential searches with a pause between them; latencies in seconds.

    After each search, a ``GET /healthz`` (no I/O behind it) measures the service process alone:
    its event loop and its share of the CPU, the part of a search that no embedding lane can
    shorten.
    """

    def __init__(self, http: httpx.AsyncClient, texts: list[str], pause: float) -> None:
        self.http, self.texts, self.pause = http, texts, pause
        self.turn = 0
        self.errors = 0

    async def one(self) -> tuple[float, float, float]:
        text = self.texts[self.turn % len(self.texts)]
        self.turn += 1
        started = time.perf_counter()
        response = await self.http.post(
            "/v1/search", json={"query": text, "collection": "bench", "top_k": 5}
        )
        searched = time.perf_counter()
        if response.status_code != 200:
            self.errors += 1
        await asyncio.sleep(self.pause / 2)
        health_started = time.perf_counter()
        (await self.http.get("/healthz")).raise_for_status()
        return started, searched - started, time.perf_counter() - health_started

    async def count(self, n: int) -> tuple[list[float], list[float]]:
        latencies, health = [], []
        for _ in range(n):
            _, latency, healthz = await self.one()
            latencies.append(latency)
            health.append(healthz)
            await asyncio.sleep(self.pause / 2)
        return latencies, health

    async def until(
        self, done: asyncio.Future[Any], since: float
    ) -> tuple[list[float], list[float]]:
        """Search until ``done``; keep the searches that started after ``since`` and before it."""
        latencies, health = [], []
        while not done.done():
            started, latency, healthz = await self.one()
            if started >= since and not done.done():
                latencies.append(latency)
                health.append(healthz)
            await asyncio.sleep(self.pause / 2)
        return latencies, health


async def run_variant(
    name: str, work: Path, seed: list[Path], more: list[Path], searches: int, pause: float
) -> dict[str, Any]:
    process, base = start_service(work / f"data-{name}", VARIANTS[name])
    try:
        async with (
            httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
            httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as search_http,
        ):
            await upload(http, seed)
            await wait_ready(http, len(seed))
            probe = Searches(search_http, queries(), pause)
            await probe.count(20)  # warm-up
            idle, idle_health = await probe.count(searches)

            # uploads and polls from another process: in this one they would delay reading
            # the search answers and count as search latency
            loop = asyncio.get_running_loop()
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as driver:
                await loop.run_in_executor(driver, int)  # started before the clock runs
                since = time.perf_counter()
                ingestion = loop.run_in_executor(
                    driver, drive_ingestion, base, more, len(seed) + len(more)
                )
                loaded, loaded_health = await probe.until(ingestion, since)
                ingest_seconds, chunks = await ingestion
            idle_after, _ = await probe.count(searches)
            errors = probe.errors
    finally:
        stop_service(process)
    return {
        "variant": name,
        "settings": VARIANTS[name],
        **figures(idle, loaded, idle_after),
        "healthz_idle": rounded(summary(idle_health)),
        "healthz_loaded": rounded(summary(loaded_health)),
        "ingest_seconds": round(ingest_seconds, 2),
        "chunks_after": chunks,
        "search_errors": errors,
        "latencies_ms": {
            phase: [round(x * 1000, 2) for x in values]
            for phase, values in (("idle", idle), ("loaded", loaded), ("idle_after", idle_after))
        },
    }


def rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


def figures(idle: list[float], loaded: list[float], idle_after: list[float]) -> dict[str, Any]:
    """Summaries and the ratios loaded / idle, the baseline being both idle phases together (one
    before the load, one after: a drift of the machine in between counts on both sides, and one
    noisy phase moves a p99 of 2 x 300 samples less than one of 300)."""
    baseline, load = summary(idle + idle_after), summary(loaded)
    return {
        "idle": rounded(summary(idle)),
        "idle_after": rounded(summary(idle_after)),
        "baseline": rounded(baseline),
        "loaded": rounded(load),
        "ratio_p50": round(load["p50"] / baseline["p50"], 2),
        "ratio_p99": round(load["p99"] / baseline["p99"], 2),
    }


async def main(docs: int, searches: int, pause: float, variants: list[str]) -> dict[str, Any]:
    info = machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="rag-bench-search-") as tmp:
        work = Path(tmp)
        files = write_corpus(work, 2 * docs)
        seed, more = files[:docs], files[docs:]
        for name in variants:
            results.append(await run_variant(name, work, seed, more, searches, pause))
            shown = {k: v for k, v in results[-1].items() if k != "latencies_ms"}
            print(json.dumps(shown), flush=True)
    info["load_average_at_end"] = os.getloadavg()
    return {
        "benchmark": "search-lane",
        "command": " ".join([".venv/bin/python -m bench.search", *sys.argv[1:]]),
        "documents": docs,
        "searches_idle": searches,
        "pause_seconds": pause,
        "goal": f"loaded p50 and p99 <= {GOAL} x idle (default variant: lane)",
        "machine": info,
        "variants": results,
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def write(result: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "search-lane.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        "| variant | idle p50 ms | idle p99 ms | loaded p50 ms | loaded p99 ms | ratio p50 | "
        "ratio p99 | idle before / after p99 ms | searches while loaded | ingestion s | "
        "`/healthz` p50 / p99 ms idle | loaded |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in result["variants"]:
        rows.append(
            f"| {v['variant']} | {ms(v['baseline']['p50'])} | {ms(v['baseline']['p99'])} | "
            f"{ms(v['loaded']['p50'])} | {ms(v['loaded']['p99'])} | **x{v['ratio_p50']}** | "
            f"**x{v['ratio_p99']}** | {ms(v['idle']['p99'])} / {ms(v['idle_after']['p99'])} | "
            f"{v['loaded']['n']} | "
            f"{v['ingest_seconds']} | {ms(v['healthz_idle']['p50'])} / "
            f"{ms(v['healthz_idle']['p99'])} | {ms(v['healthz_loaded']['p50'])} / "
            f"{ms(v['healthz_loaded']['p99'])} |"
        )
    m = result["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
    load_end = ", ".join(f"{x:.2f}" for x in m["load_average_at_end"])
    (OUT / "search-lane.md").write_text(
        f"# Search latency while ingesting (the query lane)\n\n"
        f"`{result['command']}` ({m['date_utc']}, {m['cpus']} cores, Python {m['python']}, "
        f"load average {load} at the start and {load_end} at the end).\n\n"
        f"Each variant: a fresh `rag run` (embedded default, no generation servers) with "
        f"{result['documents']} SciFact abstracts ingested; {result['searches_idle']} sequential "
        f"`POST /v1/search` calls idle ({result['pause_seconds'] * 1000:.0f} ms pause between "
        f"them), then the same while {result['documents']} more abstracts are uploaded and "
        f"ingested, then idle again. Idle figures and ratios use both idle phases together "
        f"(loaded / idle of the same variant).\n\n"
        + "\n".join(rows)
        + "\n\n`lane`: the default (queries on their own embedder and their own embedding child); "
        "`lane-shared`: `RAG_EMBEDDING_QUERY_SERVERS=0` (own embedder queue, shared llama-server); "
        "`no-lane`: `RAG_EMBEDDING_QUERY_LANE=false` (one queue for everything, as before). "
        "`/healthz` (answered by the service process alone, right after each search) shows what "
        "the service's own event loop and CPU share add under load, whatever the lane.\n\n"
        f"Goal: {result['goal']}.\n"
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    variants = result["variants"]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, stat in zip(axes, ("p50", "p99"), strict=True):
        positions = range(len(variants))
        idle = [v["baseline"][stat] * 1000 for v in variants]
        loaded = [v["loaded"][stat] * 1000 for v in variants]
        axis.bar([p - 0.2 for p in positions], idle, width=0.4, label="idle")
        axis.bar([p + 0.2 for p in positions], loaded, width=0.4, label="while ingesting")
        for p, v in zip(positions, variants, strict=True):
            axis.annotate(
                f"x{v[f'ratio_{stat}']}", (p + 0.2, v["loaded"][stat] * 1000),
                ha="center", va="bottom", fontsize=8,
            )  # fmt: skip
        axis.set_xticks(list(positions), [v["variant"] for v in variants])
        axis.set_yscale("log")
        axis.set_ylabel(f"search {stat} (ms, log)")
        axis.legend(fontsize=8)
    figure.suptitle("POST /v1/search latency, idle vs while ingesting")
    figure.tight_layout()
    figure.savefig(OUT / "search-lane.png", dpi=100)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200, help="Documents ingested while searching.")
    parser.add_argument("--searches", type=int, default=150, help="Idle searches before and after.")
    parser.add_argument("--pause", type=float, default=0.05, help="Seconds between two searches.")
    parser.add_argument("--variants", default="lane,no-lane,lane-shared")
    args = parser.parse_args()
    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    if not 1 <= 2 * args.docs <= PAGE:
        parser.error("--docs must be between 1 and 250 (2 x docs must fit one listing page)")
    stop_on_sigterm()
    outcome = asyncio.run(main(args.docs, args.searches, args.pause, chosen))
    write(outcome)
    print(f"wrote {OUT / 'search-lane.md'}")
