"""The latency the API-key check adds to ``POST /v1/search``, cached and not.

    .venv/bin/python -m bench.keys [--rounds 300] [--calls 2000]

End to end: one embedding llama-server (the runtime's MiniLM) shared by three ``rag run``
services (no children of their own, ingestion workers in-process, the bundled samples ingested
into ``default``, a SQLite registry each), identical but for the key check:

- ``open``: ``RAG_AUTH=open`` (loopback), the baseline: the same dependency runs and answers the
  open key at once;
- ``cached``: keys on, ``RAG_AUTH_CACHE_SECONDS=5``: the key comes from the process's cache (one
  registry lookup every 5 s);
- ``miss``: keys on, ``RAG_AUTH_CACHE_SECONDS=0``: every request looks its key up in the registry.

Each round sends the same query to the three, one after another in an order that rotates (never
concurrently, so they share the machine's state and the embedding server's), with the same read
key in ``Authorization: Bearer`` (ignored by ``open``). The added latency of a side is its p50
minus the baseline's, and the median of the paired per-round differences with a 95% bootstrap
interval over rounds.

In process: ``Authenticator.authenticate`` (what the dependency awaits) on a real SQLite key
store, ``--calls`` times cached and as many misses: the check's own cost, without the HTTP and
search noise around it. Writes docs/benchmarks/keys.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.pool.common import machine, percentile, stop_on_sigterm, summary
from bench.service import stop_service
from ingest.registry import KeyStore
from ingest.registry.engine import create_registry_engine
from ingest.registry.migrate import migrate
from rag.core.runtime.children import embedding_args
from rag.core.runtime.prepare import prepare_runtime
from rag.core.runtime.supervisor import free_port
from rag.core.settings import Settings
from rag.service.keys import Authenticator

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
GOAL_MS = 0.2
SIDES: dict[str, dict[str, str]] = {
    "open": {"RAG_AUTH": "open"},
    "cached": {"RAG_AUTH": "keys", "RAG_AUTH_CACHE_SECONDS": "5"},
    "miss": {"RAG_AUTH": "keys", "RAG_AUTH_CACHE_SECONDS": "0"},
}
QUERIES = [
    "How many slots does -np 4 give?",
    "Which embedding model is used by default?",
    "How do I upload documents?",
    "What does the balancer do when every upstream is busy?",
    "How are API keys stored?",
    "What is the context size of the generation server?",
]


@contextmanager
def embedding_server(work: Path) -> Iterator[str]:
    """One real embedding llama-server on a free loopback port; its URL."""
    settings = Settings(data_dir=work / "runtime", _env_file=None)
    runtime = prepare_runtime(settings)
    port = free_port()
    args = embedding_args(settings, runtime.embedding_model)
    command = [str(runtime.llama_server), *args, "--host", "127.0.0.1", "--port", str(port)]
    log = (work / "embedding.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, process, work)
        yield url
    finally:
        stop_service(process)


def _wait(ready: Any, process: subprocess.Popen[bytes], work: Path, within: float = 180) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if ready():
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"a process did not become ready; see the logs in {work}")


@contextmanager
def service(name: str, work: Path, embedding_url: str, admin_key: str) -> Iterator[tuple[str, str]]:
    """A ``rag run`` of side ``name`` with the samples ingested; its URL and a read key."""
    data_dir = work / f"data-{name}"
    data_dir.mkdir(parents=True)
    port = free_port()
    env = {
        **os.environ,
        "RAG_PORT": str(port),
        "RAG_DATA_DIR": str(data_dir),
        "RAG_EMBEDDING_URLS": json.dumps([embedding_url]),
        "RAG_GENERATION_SERVERS": "0",
        "RAG_INGEST_SAMPLES": "true",
        "RAG_ADMIN_KEY": admin_key,
        "RAG_LOG_LEVEL": "warning",
        **SIDES[name],
    }
    log = (data_dir / "service.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "rag", "run"], env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    admin = {"authorization": f"Bearer {admin_key}"}

    def ingested() -> bool:
        listing = httpx.get(f"{base}/v1/documents", params={"collection": "default"},
                            headers=admin, timeout=2).json()["documents"]  # fmt: skip
        return bool(listing) and all(d["status"] == "ready" for d in listing)

    try:
        _wait(ingested, process, data_dir)
        if name == "open":
            token = "rag_" + secrets.token_urlsafe(32)  # sent, and ignored
        else:
            created = httpx.post(
                f"{base}/v1/keys",
                json={"name": "bench", "scopes": ["read"], "collections": ["default"]},
                headers=admin,
                timeout=10,
            )
            created.raise_for_status()
            token = created.json()["key"]
        yield base, token
    finally:
        stop_service(process)


async def search(http: httpx.AsyncClient, base: str, token: str, query: str) -> float:
    started = time.perf_counter()
    response = await http.post(
        f"{base}/v1/search",
        json={"query": query, "collection": "default", "top_k": 5},
        headers={"authorization": f"Bearer {token}"},
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{base}: search answered {response.status_code}: {response.text}")
    return elapsed


async def end_to_end(
    sides: dict[str, tuple[str, str]], rounds: int, warmup: int, pause: float
) -> dict[str, list[float]]:
    """``rounds`` rounds of one search per side (rotating order); seconds per side and round."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    timeout = httpx.Timeout(30.0, connect=5.0)
    async with httpx.AsyncClient(timeout=timeout) as http:
        for turn in range(warmup + rounds):
            query = QUERIES[turn % len(QUERIES)]
            order = names[turn % len(names) :] + names[: turn % len(names)]
            for name in order:
                base, token = sides[name]
                elapsed = await search(http, base, token, query)
                if turn >= warmup:
                    times[name].append(elapsed)
                await asyncio.sleep(pause)
    return times


def median_interval(
    values: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% bootstrap interval of the median of ``values``."""
    rng = random.Random(seed)
    medians = sorted(percentile([rng.choice(values) for _ in values], 50) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def added(times: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Each keyed side against ``open``: p50 difference and the paired differences' median."""
    base = summary(times["open"])
    result = {}
    for name in [n for n in times if n != "open"]:
        side = summary(times[name])
        paired = [a - b for a, b in zip(times[name], times["open"], strict=True)]
        low, high = median_interval(paired)
        result[name] = {
            "p50_ms": round(side["p50"] * 1000, 3),
            "p99_ms": round(side["p99"] * 1000, 3),
            "added_p50_ms": round((side["p50"] - base["p50"]) * 1000, 3),
            "added_p99_ms": round((side["p99"] - base["p99"]) * 1000, 3),
            "paired_median_ms": round(percentile(paired, 50) * 1000, 3),
            "paired_median_interval_ms": [round(low * 1000, 3), round(high * 1000, 3)],
            "ratio_p50": round(side["p50"] / base["p50"], 3),
        }
    return result


async def in_process(work: Path, calls: int) -> dict[str, dict[str, float]]:
    """``Authenticator.authenticate`` on a real SQLite key store: cached, then every call a
    registry lookup; microseconds per call."""
    url = f"sqlite+aiosqlite:///{(work / 'keys.db').resolve()}"
    await migrate(url)
    engine = create_registry_engine(url)
    try:
        store = KeyStore(engine)
        token, _ = await store.create(name="bench", scopes=["read"], collections=["default"])
        result = {}
        for name, cache_seconds in [("cached", 5.0), ("miss", 0.0)]:
            auth = Authenticator(store, open_mode=False, cache_seconds=cache_seconds)
            for _ in range(50):  # warm-up (and the cache filled)
                await auth.authenticate(token)
            took = []
            for _ in range(calls):
                started = time.perf_counter()
                key = await auth.authenticate(token)
                took.append(time.perf_counter() - started)
                assert key is not None
            stats = summary(took)
            result[name] = {k: round(v * 1e6, 2) if k != "n" else v for k, v in stats.items()}
    finally:
        await engine.dispose()
    return result


async def main(rounds: int, warmup: int, pause: float, calls: int) -> dict[str, Any]:
    info = machine()
    with tempfile.TemporaryDirectory(prefix="rag-bench-keys-") as tmp:
        work = Path(tmp)
        admin_key = "rag_" + secrets.token_urlsafe(32)
        with (
            embedding_server(work) as url,
            service("open", work, url, admin_key) as open_side,
            service("cached", work, url, admin_key) as cached_side,
            service("miss", work, url, admin_key) as miss_side,
        ):
            sides = {"open": open_side, "cached": cached_side, "miss": miss_side}
            times = await end_to_end(sides, rounds, warmup, pause)
        direct = await in_process(work, calls)
    info["load_average_at_end"] = os.getloadavg()
    return {
        "benchmark": "keys",
        "command": " ".join([".venv/bin/python -m bench.keys", *sys.argv[1:]]),
        "rounds": rounds,
        "warmup_rounds": warmup,
        "pause_seconds": pause,
        "goal": f"the key check adds < {GOAL_MS} ms to POST /v1/search at p50",
        "machine": info,
        "search": {name: rounded_ms(summary(values)) for name, values in times.items()},
        "added": added(times),
        "in_process_us": direct,
        "latencies_ms": {n: [round(x * 1000, 3) for x in v] for n, v in times.items()},
    }


def rounded_ms(stats: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1000, 3) if k != "n" else v for k, v in stats.items()}


def write(result: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "keys.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
    load_end = ", ".join(f"{x:.2f}" for x in m["load_average_at_end"])
    rows = [
        "| side | search p50 ms | p99 ms | added p50 ms | paired median ms (95% interval) | "
        "added p99 ms | ratio p50 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    open_side = result["search"]["open"]
    rows.append(f"| open (baseline) | {open_side['p50']} | {open_side['p99']} | | | | |")
    for name, a in result["added"].items():
        low, high = a["paired_median_interval_ms"]
        rows.append(
            f"| {name} | {a['p50_ms']} | {a['p99_ms']} | **{a['added_p50_ms']:+}** | "
            f"{a['paired_median_ms']:+} ({low:+} to {high:+}) | {a['added_p99_ms']:+} | "
            f"x{a['ratio_p50']} |"
        )
    direct = result["in_process_us"]
    direct_rows = [
        "| path | p50 µs | p90 µs | p99 µs | mean µs |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {name} | {d['p50']} | {d['p90']} | {d['p99']} | {d['mean']} |"
            for name, d in direct.items()
        ),
    ]
    (OUT / "keys.md").write_text(
        "# The API-key check on `POST /v1/search`\n\n"
        f"`{result['command']}` ({m['date_utc']}, {m['cpus']} cores, Python {m['python']}, "
        f"load average {load} at the start and {load_end} at the end).\n\n"
        "Three `rag run` services on one shared embedding llama-server, the bundled samples in "
        "`default`, identical but for the key check: `open` (`RAG_AUTH=open`, the baseline), "
        "`cached` (keys, `RAG_AUTH_CACHE_SECONDS=5`: the key from the process's cache) and "
        "`miss` (keys, `RAG_AUTH_CACHE_SECONDS=0`: a SQLite registry lookup on every request). "
        f"{result['rounds']} rounds (after {result['warmup_rounds']} of warm-up), each the same "
        "query to the three, one after another in a rotating order, "
        f"{result['pause_seconds'] * 1000:.0f} ms apart; a read key in every request.\n\n"
        + "\n".join(rows)
        + "\n\nIn process, `Authenticator.authenticate` on a real SQLite key store (what the "
        "route's dependency awaits, without HTTP and search around it):\n\n"
        + "\n".join(direct_rows)
        + f"\n\nGoal: {result['goal']}.\n"
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = list(result["latencies_ms"])
    left.boxplot([result["latencies_ms"][n] for n in names], showfliers=False)
    left.set_xticks(range(1, len(names) + 1), names)
    left.set_ylabel("POST /v1/search (ms)")
    left.set_title("end to end, per side")
    paths = list(direct)
    right.bar(paths, [direct[p]["p50"] for p in paths], label="p50")
    right.bar(paths, [direct[p]["p99"] - direct[p]["p50"] for p in paths],
              bottom=[direct[p]["p50"] for p in paths], alpha=0.4, label="to p99")  # fmt: skip
    right.axhline(GOAL_MS * 1000, color="red", linestyle="--", label=f"goal {GOAL_MS} ms")
    right.set_yscale("log")
    right.set_ylabel("authenticate (µs, log)")
    right.set_title("in process")
    right.legend(fontsize=8)
    figure.suptitle("The API-key check's cost")
    figure.tight_layout()
    figure.savefig(OUT / "keys.png", dpi=100)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="Searches per side.")
    parser.add_argument("--warmup", type=int, default=20, help="Rounds not counted.")
    parser.add_argument("--pause", type=float, default=0.01, help="Seconds between searches.")
    parser.add_argument("--calls", type=int, default=2000, help="In-process calls per path.")
    args = parser.parse_args()
    stop_on_sigterm()
    write(asyncio.run(main(args.rounds, args.warmup, args.pause, args.calls)))
    print(f"wrote {OUT / 'keys.md'}")
