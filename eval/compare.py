"""``rag eval compare``: metrics of several runs side by side, regressions flagged.

The first report is the baseline. A metric of a later run that is lower than the baseline's by
more than ``threshold`` (absolute, default ``RAG_EVAL_REGRESSION_THRESHOLD`` = 0.01) is a
regression; the command exits 1 when there is one, so it can gate a deployment. Runs on
different datasets or splits are compared all the same, with a warning, because their figures
are not comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eval.metrics import MEASURES
from eval.report import label


@dataclass(frozen=True)
class Regression:
    run_id: str
    metric: str
    baseline: float
    value: float

    @property
    def delta(self) -> float:
        return self.value - self.baseline


@dataclass
class Comparison:
    rows: list[dict[str, Any]]
    threshold: float
    regressions: list[Regression] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def compare_reports(reports: list[dict[str, Any]], *, threshold: float) -> Comparison:
    if not reports:
        raise ValueError("nothing to compare")
    baseline = reports[0]
    comparison = Comparison(rows=[], threshold=threshold)
    identity = (baseline["dataset"]["sha256"], baseline["dataset"]["split"])
    for report in reports:
        if (report["dataset"]["sha256"], report["dataset"]["split"]) != identity:
            comparison.warnings.append(
                f"{report['run_id']} is on other data ({report['dataset']['name']}, "
                f"{report['dataset']['split']}) than the baseline"
            )
        row: dict[str, Any] = {
            "run_id": report["run_id"],
            "label": label(report),
            "metrics": {},
            "p95_ms": report.get("latency_ms", {}).get("p95"),
        }
        for name in MEASURES:
            value = float(report["metrics"].get(name, float("nan")))
            base = float(baseline["metrics"].get(name, float("nan")))
            row["metrics"][name] = (value, value - base)
            if report is not baseline and value < base - threshold:
                comparison.regressions.append(Regression(report["run_id"], name, base, value))
        comparison.rows.append(row)
    return comparison


def comparison_markdown(comparison: Comparison) -> str:
    header = "| run | " + " | ".join(MEASURES) + " | p95 ms |"
    lines = [header, "|" + " --- |" * (len(MEASURES) + 2)]
    flagged = {(r.run_id, r.metric) for r in comparison.regressions}
    for index, row in enumerate(comparison.rows):
        cells = []
        for name in MEASURES:
            value, delta = row["metrics"][name]
            cell = f"{value:.4f}" if index == 0 else f"{value:.4f} ({delta:+.4f})"
            if (row["run_id"], name) in flagged:
                cell += " **REGRESSION**"
            cells.append(cell)
        p95 = f"{row['p95_ms']:.1f}" if row["p95_ms"] is not None else "-"
        name = f"{row['label']} `{row['run_id']}`" + (" (baseline)" if index == 0 else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {p95} |")
    lines.append("")
    if comparison.regressions:
        lines.append(
            f"{len(comparison.regressions)} regression(s) beyond {comparison.threshold:.4f}."
        )
    else:
        lines.append(f"No regression beyond {comparison.threshold:.4f}.")
    lines += [f"warning: {warning}" for warning in comparison.warnings]
    return "\n".join(lines)
