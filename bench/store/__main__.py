"""The vector store at 10k, 100k and 1M chunks: the embedded store against local mode.

    .venv/bin/python -m bench.store [--sizes 10000,100000] [--baseline-size 10000]
                                    [--source DATA_DIR_OF_A_RAG_EVAL_RUN] [--keep DIR]
    .venv/bin/python -m bench.store --sweep-ef 64,100,200,400 --index DIR/edge-1000000

Each size gets a fresh embedded store (Qdrant Edge in its store process) and, at
``--baseline-size`` only, qdrant-client local mode on the same points in the same run (local mode
does not load 100k points in reasonable time). Through ``VectorStore``, as the service calls it:
upserts in batches of 256 (ms per point), indexing (``optimize``), 300 SciFact test queries
each dense, filtered on five documents, sparse (BM25) and hybrid (RRF), recall@10 of dense
against exact search (numpy), deleting 20 documents one by one, reopening until the first answer,
the RSS of the process that holds the data, and the longest stall of the event loop in every
phase (an asyncio ticker every 5 ms). Points: bench/store/data.py. Results are merged by size
into docs/benchmarks/store.{json,md,png}.

``--keep DIR`` leaves each size's embedded store in ``DIR/edge-<size>``; ``--sweep-ef`` then
measures recall@10 and latency at each search breadth on such a store without rebuilding it
(bench/store/sweep.py), and ``--append DIR`` the cost of new points in each kept collection,
the sizes in turn (bench/store/append.py):

    .venv/bin/python -m bench.store --append DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.store import append, data, report, sweep
from bench.store.measure import measure


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)


def _machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{os.cpu_count()} cores, {model}, {python}"


async def run(
    sizes: list[int], baseline: int, source: Path | None, keep: Path | None
) -> dict[str, Any]:
    base = await data.load(source)
    command = f".venv/bin/python -m bench.store --sizes {','.join(map(str, sizes))}"
    result: dict[str, Any] = {
        "benchmark": "store",
        "method": data.__doc__.strip().split("\n\n", 1)[1].replace("\n", " ")
        if data.__doc__
        else "",
        "sizes": {},
    }
    for size in sizes:
        _log(f"{size} points")
        corpus = data.Corpus(base, size)
        entry: dict[str, Any] = {
            "command": command, "machine": _machine(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="rag-bench-store-") as tmp:
            edge = Path(tmp) / "edge"
            if keep is not None:
                edge = keep / f"edge-{size}"
                if edge.exists():
                    shutil.rmtree(edge)
            entry["edge"] = await measure(
                "edge", corpus, base.query_vectors, base.query_texts, edge, _log
            )
            if keep is not None:
                (edge / sweep.MARKER).write_text(json.dumps({"points": size}) + "\n")
            if size == baseline:
                entry["local"] = await measure(
                    "local", corpus, base.query_vectors, base.query_texts, Path(tmp) / "local", _log
                )
                entry["ratio_edge_to_local"] = report.ratios(entry["edge"], entry["local"])
        entry["load_average"] = [round(x, 2) for x in os.getloadavg()]
        result["sizes"][str(size)] = entry
        report.write(report.merge(result))  # after each size: a later failure keeps this one
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--baseline-size", type=int, default=10_000)
    parser.add_argument("--source", type=Path, default=None)
    parser.add_argument(
        "--quality", nargs=2, type=Path, metavar=("LOCAL_RUNS", "EDGE_RUNS"), default=None,
        help="only record nDCG@10 of rag eval reports of local mode and of the embedded store",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, default=None, help="keep each store in DIR/edge-N")
    parser.add_argument(
        "--sweep-ef", default=None, metavar="EF,EF,...",
        help="recall and latency at each hnsw_ef on the kept store --index (0: the default)",
    )  # fmt: skip
    parser.add_argument("--index", type=Path, default=None, help="a store kept by --keep")
    parser.add_argument(
        "--append", type=Path, default=None, metavar="DIR",
        help="the cost of new points in each store that --keep left in DIR, sizes in turn",
    )  # fmt: skip
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "store", "method": "", "sizes": {}}
    if args.append:
        stores = sorted(
            (p for p in args.append.glob("edge-*") if (p / sweep.MARKER).exists()),
            key=lambda p: int(p.name.split("-", 1)[1]),
        )
        if not stores:
            parser.error(f"--append: no store that --keep left in {args.append}")
        result = report.merge(result)
        result["append"] = asyncio.run(append.append(stores, _log))
        report.write(result)
        _log(f"wrote {report.OUT / 'store.md'}")
        return
    if args.sweep_ef:
        if args.index is None:
            parser.error("--sweep-ef needs --index DIR (a store kept by --keep)")
        efs = [int(x) for x in args.sweep_ef.split(",") if x]
        found = asyncio.run(sweep.sweep(args.index, efs, _log))
        result = report.merge(result)
        result.setdefault("ef_sweep", {})[str(found["points"])] = found  # this size's again
        report.write(result)
        _log(f"wrote {report.OUT / 'store.md'}")
        return
    if args.quality:
        result = report.merge(result)
        result["retrieval_quality"] = report.quality(*args.quality)
        report.write(result)
        _log(f"wrote {report.OUT / 'store.md'}")
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    asyncio.run(run(sizes, args.baseline_size, args.source, args.keep))
    _log(f"wrote {report.OUT / 'store.md'}")


if __name__ == "__main__":
    main()
