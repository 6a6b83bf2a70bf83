"""A PNG of the metrics across runs (grouped bars, one group per metric), with matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.metrics import MEASURES
from eval.report import label


def plot_runs(reports: list[dict[str, Any]], path: Path, *, title: str | None = None) -> Path:
    """Draw every run's metrics as bars, one colour per run; return ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(MEASURES)
    width = 0.8 / max(1, len(reports))
    figure, axes = plt.subplots(figsize=(max(7.0, 1.6 * len(names) + 0.4 * len(reports)), 5.5))
    for index, report in enumerate(reports):
        values = [float(report["metrics"].get(name, 0.0)) for name in names]
        offsets = [i + (index - (len(reports) - 1) / 2) * width for i in range(len(names))]
        bars = axes.bar(offsets, values, width, label=label(report))
        axes.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    axes.set_xticks(range(len(names)), names)
    axes.set_ylim(0, 1.1)
    axes.set_ylabel("score")
    axes.set_title(title or f"Retrieval metrics ({reports[0]['dataset']['name']})")
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
