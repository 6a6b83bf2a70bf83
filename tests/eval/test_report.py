"""Reports, comparison with regression flags, and the plot, on hand-made run results."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.compare import compare_reports, comparison_markdown
from eval.datasets import Dataset, Document
from eval.report import build_report, load_report, markdown_summary, write_report
from eval.runner import IngestStats, QueryOutcome, RunOptions, RunResult
from eval.truncation import truncate_ids


def _result(ranking_q1: dict[str, float]) -> RunResult:
    dataset = Dataset(
        name="tiny", path=Path("/data/tiny"), split="test",
        corpus={d: Document(d, "", f"text {d}", {}) for d in ("a", "b", "c")},
        queries={"q1": "first", "q2": "second"},
        qrels={"q1": {"a": 1}, "q2": {"b": 1}},
        files={"corpus.jsonl": "0" * 64},
    )  # fmt: skip
    outcomes = {
        "q1": QueryOutcome(ranking_q1, 0.010, 3),
        "q2": QueryOutcome({"b": 0.9, "a": 0.1}, 0.030, 2),
    }
    return RunResult(
        dataset, RunOptions(), "eval-tiny-x", {"name": "m.gguf", "sha256": "1" * 64},
        IngestStats(documents=3, ingested=3, chunks=3, seconds=1.5), outcomes, 2.0,
    )  # fmt: skip


def test_report_has_the_keys_scripts_rely_on(tmp_path: Path) -> None:
    report = build_report(_result({"a": 0.9, "b": 0.5}), settings_snapshot={"x": 1})
    assert set(report["metrics"]) >= {"ndcg@10", "recall@100", "mrr@10", "recall@10", "map"}
    assert report["metrics"]["mrr@10"] == pytest.approx(1.0)
    assert report["latency_ms"]["p50"] == pytest.approx(20.0)
    assert report["ingestion"]["documents_per_second"] == pytest.approx(2.0)
    assert report["dataset"]["sha256"] == {"corpus.jsonl": "0" * 64}
    assert report["model"]["sha256"] == "1" * 64
    assert report["per_query"][0]["retrieved"][0] == ["a", 0.9]
    path = write_report(report, tmp_path)
    assert load_report(path) == report
    assert "| 1.0000 |" in markdown_summary(report)


def test_compare_flags_regressions_beyond_the_threshold(tmp_path: Path) -> None:
    good = build_report(_result({"a": 0.9, "b": 0.5}), settings_snapshot={})
    worse = build_report(_result({"b": 0.9, "a": 0.5}), settings_snapshot={})  # a drops to rank 2
    same = build_report(_result({"a": 0.8, "c": 0.5}), settings_snapshot={})
    comparison = compare_reports([good, worse, same], threshold=0.01)
    flagged = {(r.run_id, r.metric) for r in comparison.regressions}
    assert (worse["run_id"], "mrr@10") in flagged
    assert (worse["run_id"], "ndcg@10") in flagged
    assert not any(run_id == same["run_id"] for run_id, _ in flagged)
    table = comparison_markdown(comparison)
    assert "REGRESSION" in table
    assert "(baseline)" in table
    assert not compare_reports([good, worse], threshold=0.5).regressions


def test_load_report_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not an evaluation report"):
        load_report(tmp_path / "x.json")
    with pytest.raises(ValueError, match="not a readable"):
        load_report(tmp_path / "missing.json")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from eval.plot import plot_runs

    reports = [build_report(_result({"a": 0.9}), settings_snapshot={}) for _ in range(2)]
    path = plot_runs(reports, tmp_path / "runs.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_truncate_ids_keeps_the_head_and_the_closing_token() -> None:
    assert truncate_ids([101, 1, 2, 102], 4) == [101, 1, 2, 102]
    assert truncate_ids([101, 1, 2, 3, 4, 102], 4) == [101, 1, 2, 102]
