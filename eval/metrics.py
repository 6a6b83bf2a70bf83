"""Retrieval metrics from ``ir-measures`` (on ``pytrec_eval``), and latency percentiles.

The formulas are not written here: ``ir-measures`` computes them with ``pytrec_eval``, the same
trec_eval code that BEIR and MTEB use, so figures compare with published ones. Names map as::

    ndcg@10     nDCG@10   (graded gains, log2 discount, trec_eval's ndcg_cut_10)
    recall@10   R@10      relevant documents in the top 10 / all relevant documents
    recall@100  R@100
    mrr@10      RR@10     1 / rank of the first relevant document within the top 10, else 0
    map         AP        mean average precision over the whole ranking (up to top_k)

A query whose ranking is empty scores 0 on every measure (trec_eval would leave it out and so
inflate the mean). Ties in score are broken by document id, descending, as trec_eval does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import ir_measures

MEASURES: dict[str, Any] = {
    "ndcg@10": ir_measures.nDCG @ 10,
    "recall@10": ir_measures.R @ 10,
    "recall@100": ir_measures.R @ 100,
    "mrr@10": ir_measures.RR @ 10,
    "map": ir_measures.AP,
}

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def evaluate(qrels: Qrels, run: Run) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean of each measure over the judged queries, and each query's own values."""
    names = {str(measure): name for name, measure in MEASURES.items()}
    per_query: dict[str, dict[str, float]] = {
        query_id: dict.fromkeys(MEASURES, 0.0) for query_id in qrels
    }
    judged_run = {qid: dict(docs) for qid, docs in run.items() if qid in qrels and docs}
    plain_qrels = {qid: dict(docs) for qid, docs in qrels.items()}
    if judged_run:
        for metric in ir_measures.iter_calc(list(MEASURES.values()), plain_qrels, judged_run):
            per_query[metric.query_id][names[str(metric.measure)]] = float(metric.value)
    count = len(per_query) or 1
    means = {name: sum(values[name] for values in per_query.values()) / count for name in MEASURES}
    return means, per_query


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100), interpolating linearly as numpy does."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max of per-query latencies, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {}
    return {
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "mean": sum(ms) / len(ms),
        "max": max(ms),
    }
