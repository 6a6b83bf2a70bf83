"""The benchmark's report: ``answer.json``, ``answer.md`` and ``answer.png`` (when matplotlib
is installed) under ``docs/benchmarks/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(result: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "answer.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    if plot(result, out / "answer.png"):
        text += "\n![time to first token and search latency](answer.png)\n"
    (out / "answer.md").write_text(text)
    return text


def markdown(result: dict[str, Any]) -> str:
    ttft, search, corpus = result["ttft"], result["search"], result["collection"]

    def row(name: str, s: dict[str, float]) -> str:
        return f"| {name} | {s['n']} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} |"

    added = ttft["added_ttft_paired"]["p50_ms"]
    verdict = "met" if added < 50 else "missed"
    replicated = corpus["points"] - corpus["unique_embedded_texts"]
    reuse = f"; {replicated} points reuse their vectors under other ids" if replicated > 0 else ""
    store = search["vector_store_only"]["p50_ms"]
    prepare = ttft["prepare_in_process"]["p50_ms"]
    lines = [
        "# Answer benchmark",
        "",
        f"Run {result['date_utc']} on {result['machine']['cpus']} CPUs, "
        f"command `{result['command']}`. Setup: {result['setup']['generation']}; "
        f"{result['setup']['embedding']}; {result['setup']['vector_store']}.",
        "",
        "## Time to first token",
        "",
        "Time from sending the request to the first character of the answer text: the first "
        "`delta` event of `POST /v1/answer` (stream), against the first answer character from "
        "llama-server's `/completion` called directly with the same final prompt and grammar. "
        f"Both arms run alternately per question; prompt cache: {result['setup']['prompt_cache']}.",
        "",
        "| measure | n | p50 ms | p90 ms | p99 ms |",
        "| --- | --- | --- | --- | --- |",
        row("`/v1/answer` (stream) first delta", ttft["service_ttft"]),
        row("llama-server direct, same prompt", ttft["direct_ttft"]),
        row("added by the service (paired difference)", ttft["added_ttft_paired"]),
        row("`/v1/answer` `sources` event", ttft["service_time_to_sources_event"]),
        row("retrieval + prompt building in process", ttft["prepare_in_process"]),
        "",
        f"Ratio of p50s (service / direct): {ttft['ratio_p50']}. Goal: added p50 < 50 ms — "
        f"**{verdict}** ({added} ms). Of the service's own time, retrieval and prompt building "
        f"take {prepare} ms at p50, of which the vector store's query alone ("
        f"{result['setup']['vector_store']}, {corpus['points']} points, below) takes {store} ms.",
        "",
        "## Search latency",
        "",
        f"`POST /v1/search` (top 5, dense) on a collection of {corpus['points']} chunks "
        f"({corpus['unique_embedded_texts']} distinct texts embedded by the real embedding "
        f"server{reuse}).",
        "Baseline: one query embedding straight from the embedding llama-server.",
        "",
        "| measure | n | p50 ms | p90 ms | p99 ms |",
        "| --- | --- | --- | --- | --- |",
        row("`POST /v1/search`", search["search"]),
        row("embedding only (baseline)", search["embedding_only_baseline"]),
        row("vector store only, in process", search["vector_store_only"]),
        "",
        f"Ratio of p50s (search / embedding only): {search['ratio_p50']}.",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ttft, search = result["ttft"], result["search"]
    panels = [
        ("time to first answer character", [
            ("/v1/answer", ttft["service_ttft"]), ("llama-server direct", ttft["direct_ttft"]),
            ("added (paired)", ttft["added_ttft_paired"]),
        ]),
        ("search", [
            ("/v1/search", search["search"]), ("embedding only", search["embedding_only_baseline"]),
            ("vector store only", search["vector_store_only"]),
        ]),
    ]  # fmt: skip
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, (title, rows) in zip(axes, panels, strict=True):
        names = [name for name, _ in rows]
        positions = range(len(rows))
        axis.bar([p - 0.2 for p in positions], [s["p50_ms"] for _, s in rows], 0.4, label="p50")
        axis.bar([p + 0.2 for p in positions], [s["p90_ms"] for _, s in rows], 0.4, label="p90")
        axis.set_xticks(list(positions), names)
        axis.set_ylabel("ms")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
