"""The IR library against figures computed by hand, and the latency percentiles."""

from __future__ import annotations

import math

import pytest

from eval.metrics import evaluate, latency_summary, percentile


def test_metrics_match_a_hand_computed_example() -> None:
    # q1: relevant d1 (gain 1) and d3 (gain 2); ranked d2, d1, d5, d3.
    # DCG@10 = 1/log2(3) + 2/log2(5) = 0.63093 + 0.86135 = 1.49228
    # IDCG@10 = 2/log2(2) + 1/log2(3) = 2 + 0.63093 = 2.63093 -> nDCG@10 = 0.56721
    # RR@10 = 1/2 (first relevant at rank 2); R@10 = 2/2
    # AP = (1/2 + 2/4) / 2 = 0.5 (binary relevance: score >= 1)
    # q2: relevant d9, never retrieved -> every measure 0; q3: no ranking at all -> 0.
    qrels = {"q1": {"d1": 1, "d3": 2, "d4": 0}, "q2": {"d9": 1}, "q3": {"d1": 1}}
    run = {"q1": {"d2": 0.9, "d1": 0.8, "d5": 0.7, "d3": 0.6}, "q2": {"d1": 0.5}, "q3": {}}
    means, per_query = evaluate(qrels, run)
    dcg = 1 / math.log2(3) + 2 / math.log2(5)
    idcg = 2 + 1 / math.log2(3)
    assert per_query["q1"]["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-6)
    assert per_query["q1"]["ndcg@10"] == pytest.approx(0.56721, abs=1e-5)
    assert per_query["q1"]["mrr@10"] == pytest.approx(0.5)
    assert per_query["q1"]["recall@10"] == pytest.approx(1.0)
    assert per_query["q1"]["recall@100"] == pytest.approx(1.0)
    assert per_query["q1"]["map"] == pytest.approx(0.5)
    assert per_query["q2"] == dict.fromkeys(per_query["q2"], 0.0)
    assert per_query["q3"] == dict.fromkeys(per_query["q3"], 0.0)
    assert means["ndcg@10"] == pytest.approx(dcg / idcg / 3, abs=1e-6)
    assert means["mrr@10"] == pytest.approx(0.5 / 3)


def test_cutoffs_apply() -> None:
    qrels = {"q": {"d11": 1}}
    run = {"q": {f"d{i}": 1.0 - i / 100 for i in range(20)}}  # d11 at rank 12
    _, per_query = evaluate(qrels, run)
    assert per_query["q"]["mrr@10"] == 0.0
    assert per_query["q"]["ndcg@10"] == 0.0
    assert per_query["q"]["recall@10"] == 0.0
    assert per_query["q"]["recall@100"] == 1.0
    assert per_query["q"]["map"] == pytest.approx(1 / 12)


def test_percentiles_interpolate_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))
    summary = latency_summary([0.010, 0.020, 0.030])
    assert summary["p50"] == pytest.approx(20.0)
    assert summary["max"] == pytest.approx(30.0)
    assert latency_summary([]) == {}
