"""The record of one evaluation run: a JSON file and a Markdown summary beside it.

The JSON report (``schema`` 1) holds everything needed to trust, reproduce and compare a run::

    run_id, created_at, duration_seconds
    git          commit and whether the work tree had changes
    dataset      name, path, split, sizes and the sha256 of every file read
    model        embedding model: file name, path and sha256 (or what a remote server reports)
    settings     run options, the index settings and their hash, the collection used
    metrics      ndcg@10, recall@10, recall@100, mrr@10, map (means over judged queries)
    latency_ms   search latency per query (embed + Qdrant): p50, p95, p99, mean, max
    ingestion    documents ingested / skipped / failed, chunks, seconds, documents and chunks/s
    per_query    for each query: metrics, relevant documents, top 10 retrieved with scores,
                 latency, error if any
    warnings     dataset and ingestion warnings
"""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eval.metrics import MEASURES, evaluate, latency_summary
from eval.runner import RunResult, index_hash

SCHEMA = 1
TOP_SHOWN = 10
REPO_ROOT = Path(__file__).resolve().parents[1]


def git_identity(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit checked out at ``root`` and whether tracked files differ from it."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                check=True,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def build_report(result: RunResult, *, settings_snapshot: dict[str, Any]) -> dict[str, Any]:
    dataset, options = result.dataset, result.options
    run = {qid: outcome.ranking for qid, outcome in result.outcomes.items()}
    means, per_query_metrics = evaluate(dataset.qrels, run)
    created = datetime.now(UTC)
    per_query = []
    for query_id, outcome in result.outcomes.items():
        per_query.append(
            {
                "query_id": query_id,
                "query": dataset.queries[query_id],
                "metrics": per_query_metrics[query_id],
                "relevant": {d: s for d, s in dataset.qrels[query_id].items() if s > 0},
                "retrieved": [
                    [doc, score] for doc, score in list(outcome.ranking.items())[:TOP_SHOWN]
                ],
                "latency_ms": outcome.seconds * 1000,
                "chunks": outcome.chunks,
                "error": outcome.error,
            }
        )
    warnings = list(dataset.warnings)
    warnings += [f"document {d} not ingested: {why}" for d, why in result.ingestion.failed.items()]
    warnings += [f"query {q['query_id']}: {q['error']}" for q in per_query if q["error"]]
    return {
        "schema": SCHEMA,
        "run_id": f"{created:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
        "created_at": created.isoformat(timespec="seconds"),
        "duration_seconds": result.seconds,
        "git": git_identity(),
        "dataset": dataset.identity(),
        "model": result.model,
        "settings": {
            "retrieval": options.retrieval,
            "top_k": options.top_k,
            "chunk_oversample": options.oversample,
            "document_score": "max over the document's chunks",
            "index": options.index_settings(),
            "index_hash": index_hash(options, result.model),
            "collection": result.collection,
            "service": settings_snapshot,
        },
        "metrics": means,
        "latency_ms": latency_summary([o.seconds for o in result.outcomes.values()]),
        "ingestion": result.ingestion.to_json(),
        "per_query": per_query,
        "warnings": warnings,
    }


def label(report: dict[str, Any]) -> str:
    """A short name of a run: dataset, retrieval, chunking."""
    index = report["settings"]["index"]
    chunking = index["chunking"]["mode"]
    if chunking == "document":
        chunking = f"one chunk/doc, {index['too_long']} at {index['embedding_max_tokens']}"
    else:
        chunking = f"chunks of {index['chunking']['size_tokens']}"
    return f"{report['dataset']['name']} {report['settings']['retrieval']} ({chunking})"


def markdown_summary(report: dict[str, Any]) -> str:
    metrics, latency, ingestion = report["metrics"], report["latency_ms"], report["ingestion"]
    git = report["git"]
    lines = [
        f"# Evaluation {report['run_id']}: {label(report)}",
        "",
        f"- dataset: `{report['dataset']['name']}` ({report['dataset']['split']}), "
        f"{report['dataset']['documents']} documents, {report['dataset']['queries']} queries",
        f"- model: `{report['model'].get('name')}` sha256 `{report['model'].get('sha256')}`",
        f"- collection: `{report['settings']['collection']}`",
        f"- commit: `{git.get('commit')}`{' (with local changes)' if git.get('dirty') else ''}",
        f"- run time: {report['duration_seconds']:.1f} s",
        "",
        "| " + " | ".join(MEASURES) + " |",
        "|" + " --- |" * len(MEASURES),
        "| " + " | ".join(f"{metrics[name]:.4f}" for name in MEASURES) + " |",
        "",
        "| search latency | p50 | p95 | p99 |",
        "| --- | --- | --- | --- |",
        f"| ms | {latency.get('p50', 0):.1f} | {latency.get('p95', 0):.1f} | "
        f"{latency.get('p99', 0):.1f} |",
        "",
    ]
    if ingestion["ingested"]:
        lines.append(
            f"Ingestion: {ingestion['ingested']} documents, {ingestion['chunks']} chunks in "
            f"{ingestion['seconds']:.1f} s ({ingestion['documents_per_second']:.1f} documents/s, "
            f"{ingestion['chunks_per_second']:.1f} chunks/s)."
        )
    else:
        lines.append(
            f"Ingestion skipped: all {ingestion['skipped']} documents already in the collection."
        )
    if report["warnings"]:
        lines += ["", "Warnings:", ""] + [f"- {warning}" for warning in report["warnings"][:20]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output_dir: Path) -> Path:
    """Write ``<run>.json`` and ``<run>.md`` into ``output_dir``; return the JSON path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{report['dataset']['name']}-{report['settings']['retrieval']}-{report['run_id']}"
    path = output_dir / f"{stem}.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown_summary(report), encoding="utf-8")
    return path


def load_report(path: Path) -> dict[str, Any]:
    """Read a JSON report written by :func:`write_report`; raises ValueError if it is not one."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable evaluation report ({exc})") from exc
    if not isinstance(report, dict) or report.get("schema") != SCHEMA or "metrics" not in report:
        raise ValueError(f"{path}: not an evaluation report (schema {SCHEMA})")
    return report
