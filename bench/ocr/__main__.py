"""OCR speed and character accuracy on pages whose text is known, against the text layer.

    .venv/bin/python -m bench.ocr [--pages 10] [--dpi 200 150 300]

Each page holds one SciFact abstract (title and text, ~200 words, Helvetica 11 pt, fpdf2). The
text PDF is rendered to a clean image-only PDF at each ``--dpi`` (``bench/ocr/scan.py``) and
parsed by the service's own PDF parser (``parse_document``, so pages without text go through
OCR: pypdfium2 + Tesseract). The baseline, in the same run, is the same parser on the text PDF
(pypdf's text layer, no OCR). Reported per resolution: pages per second, and character accuracy
``1 - edit distance / length`` of each page's text against the text put on it (whitespace
collapsed); the goal is >= 0.98 at 200 dpi. Results: docs/benchmarks/ocr.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

from fpdf import FPDF

from bench.ocr.scan import image_only_pdf
from ingest.detect import PDF
from ingest.parsing import parse_document

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "benchmarks"
CORPUS = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
GOAL = 0.98
_SPACE = re.compile(r"\s+")


def page_texts(count: int) -> list[str]:
    texts = []
    with CORPUS.open() as lines:
        for line in lines:
            doc = json.loads(line)
            text = f"{doc['title']} {doc['text']}"
            words = text.split()
            if len(words) < 150 or not text.isascii():  # Helvetica covers latin-1; keep it plain
                continue
            texts.append(" ".join(words[:220]))
            if len(texts) == count:
                return texts
    return texts


def text_pdf(texts: list[str]) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for text in texts:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, start=1):
        current = [i]
        for j, other in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other))
            )
        previous = current
    return previous[-1]


def accuracy(found: str, truth: str) -> float:
    found, truth = normal(found), normal(truth)
    return max(0.0, 1 - edit_distance(found, truth) / len(truth))


def measure(pdf: bytes, texts: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    doc = parse_document(pdf, PDF, "bench.pdf")
    seconds = time.perf_counter() - started
    by_page = {section.page: section.text for section in doc.sections}
    scores = [accuracy(by_page.get(n, ""), text) for n, text in enumerate(texts, start=1)]
    return {
        "seconds": round(seconds, 3),
        "pages_per_second": round(len(texts) / seconds, 3),
        "accuracy_mean": round(statistics.fmean(scores), 4),
        "accuracy_min": round(min(scores), 4),
        "accuracy_per_page": [round(score, 4) for score in scores],
    }


def main(pages: int, resolutions: list[int]) -> dict[str, Any]:
    texts = page_texts(pages)
    source = text_pdf(texts)
    baseline = measure(source, texts)
    runs = {}
    for dpi in resolutions:
        scan = image_only_pdf(source, dpi=dpi)
        runs[str(dpi)] = measure(scan, texts) | {"pdf_bytes": len(scan)}
    main_dpi = str(200 if 200 in resolutions else resolutions[0])
    return {
        "benchmark": "ocr",
        "command": f".venv/bin/python -m bench.ocr --pages {pages} --dpi "
        + " ".join(map(str, resolutions)),
        "pages": len(texts),
        "baseline_text_layer": baseline,
        "ocr": runs,
        "ratio_pages_per_second_ocr_vs_text_layer": round(
            runs[main_dpi]["pages_per_second"] / baseline["pages_per_second"], 4
        ),
        "goal": f"accuracy >= {GOAL} at 200 dpi",
        "goal_met": runs[main_dpi]["accuracy_min"] >= GOAL,
        "engine": "tesseract " + os.popen("tesseract --version 2>&1").readline().split()[-1],
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write(result: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ocr.json").write_text(json.dumps(result, indent=2) + "\n")
    base = result["baseline_text_layer"]
    rows = [
        f"| text layer (baseline, no OCR) | {base['pages_per_second']} | "
        f"{base['accuracy_mean']} | {base['accuracy_min']} |"
    ]
    for dpi, run in result["ocr"].items():
        rows.append(
            f"| OCR, image-only PDF at {dpi} dpi | {run['pages_per_second']} | "
            f"{run['accuracy_mean']} | {run['accuracy_min']} |"
        )
    (OUT / "ocr.md").write_text(
        f"# OCR\n\n`{result['command']}` ({result['date_utc']}, {result['cpus']} cores, load "
        f"average {result['load_average']}, {result['engine']}).\n\n"
        f"{result['pages']} pages, each one SciFact abstract (~220 words, Helvetica 11 pt), "
        "parsed by the service's PDF parser; OCR pages are clean image-only renderings of the "
        "same pages.\n\n"
        "| input | pages/s | character accuracy (mean) | (worst page) |\n"
        "| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"
        f"OCR throughput / text-layer throughput at 200 dpi: "
        f"**{result['ratio_pages_per_second_ocr_vs_text_layer']}**. Goal {result['goal']}: "
        f"**{'met' if result['goal_met'] else 'NOT met'}**. Character accuracy is "
        "1 - edit distance / length against the text put on the page, whitespace collapsed.\n"
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    labels = ["text layer", *(f"OCR {dpi} dpi" for dpi in result["ocr"])]
    runs = [base, *result["ocr"].values()]
    left.bar(labels, [run["pages_per_second"] for run in runs])
    left.set_ylabel("pages per second")
    left.set_yscale("log")
    right.bar(labels, [run["accuracy_mean"] for run in runs])
    right.axhline(GOAL, color="red", linestyle="--", label=f"goal {GOAL}")
    right.set_ylim(0.9, 1.0)
    right.set_ylabel("character accuracy")
    right.legend()
    figure.tight_layout()
    figure.savefig(OUT / "ocr.png", dpi=100)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--dpi", type=int, nargs="+", default=[200, 150, 300])
    args = parser.parse_args()
    outcome = main(args.pages, args.dpi)
    write(outcome)
    print(json.dumps(outcome, indent=2))
