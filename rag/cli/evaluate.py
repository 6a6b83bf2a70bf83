"""``rag eval``: offline retrieval evaluation (run, compare, plot). See docs/evaluation.md."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from eval.compare import compare_reports, comparison_markdown
from eval.datasets import Dataset, DatasetError, load_dataset
from eval.report import build_report, load_report, write_report
from eval.runner import Chunking, RunOptions, run_evaluation
from eval.runtime import EvalRuntimeError, embedding_service
from rag.cli.progress import console
from rag.core.errors import RagError, RuntimeSetupError
from rag.core.runtime.paths import EMBEDDING_DIMENSIONS
from rag.core.settings import Settings
from rag.core.vectorstore import Retrieval, VectorStore, backend_of

eval_app = typer.Typer(help="Offline retrieval evaluation on BEIR-layout datasets.")


def _settings() -> Settings:
    settings = Settings.model_validate({})  # reads RAG_* from the environment
    logging.basicConfig(
        level=max(logging.WARNING, logging.getLevelName(settings.log_level.upper())),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return settings


def eval_dir(settings: Settings) -> Path:
    return settings.eval_dir or settings.data_dir / "eval"


def _snapshot(settings: Settings, urls: list[str]) -> dict[str, Any]:
    keys = (
        "embedding_batch_size", "embedding_concurrency", "embedding_slots", "embedding_ubatch",
        "llama_threads", "eval_embedding_servers", "eval_concurrency", "parse_processes",
    )  # fmt: skip
    snapshot: dict[str, Any] = {key: getattr(settings, key) for key in keys}
    snapshot["qdrant"] = settings.qdrant_url or backend_of(settings)
    snapshot["embedding_urls"] = urls or "started by the run"
    return snapshot


class _Bars:
    """One rich progress bar per stage, with an ETA."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


async def _run(
    dataset: Dataset, settings: Settings, options: RunOptions, urls: list[str], output: Path
) -> Path:
    columns = (
        TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console) as progress:
        starting = progress.add_task("starting", total=None)
        async with embedding_service(settings, urls=urls) as service:
            progress.update(starting, total=1, completed=1)
            store = VectorStore.from_settings(
                settings, dimensions=EMBEDDING_DIMENSIONS, data_dir=eval_dir(settings)
            )
            try:
                with ProcessPoolExecutor(settings.parse_processes) as executor:
                    result = await run_evaluation(
                        dataset, settings=settings, options=options, store=store,
                        upstream=service.pool, model=service.model, executor=executor,
                        progress=_Bars(progress),
                    )  # fmt: skip
            finally:
                await store.close()
    report = build_report(result, settings_snapshot=_snapshot(settings, urls))
    path = write_report(report, output)
    metrics = report["metrics"]
    console.print(
        " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
        + f" | search p50 {report['latency_ms'].get('p50', 0):.1f} ms"
        + f" | {report['duration_seconds']:.0f} s"
    )
    return path


@eval_app.command("run")
def run_command(
    dataset: Annotated[Path, typer.Option(help="Folder in the BEIR layout.")],
    retrieval: Annotated[
        Retrieval | None, typer.Option(help="dense, sparse (BM25) or hybrid (RRF of both).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Folder for the JSON and Markdown reports.")
    ] = None,
    split: Annotated[str, typer.Option(help="Judgements to use: qrels/<split>.tsv.")] = "test",
    chunking: Annotated[
        Chunking, typer.Option(help="default: the service's chunking; document: one chunk each.")
    ] = "default",
    truncate: Annotated[
        bool, typer.Option(help="Cut embedding inputs at the token limit instead of splitting.")
    ] = False,
    reference: Annotated[
        bool, typer.Option(help="The reference setting: --chunking document --truncate.")
    ] = False,
    top_k: Annotated[int | None, typer.Option(help="Documents ranked per query.")] = None,
    url: Annotated[
        list[str] | None,
        typer.Option(help="Use this embedding llama-server (or rag balancer); repeatable."),
    ] = None,
) -> None:
    """Ingest a dataset through the real pipeline, search its queries, score and report.

    The last line printed is the path of the JSON report."""
    settings = _settings()
    try:
        loaded = load_dataset(dataset, split)
    except DatasetError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if reference:
        chunking, truncate = "document", True
    options = RunOptions.from_settings(
        settings, retrieval=retrieval, chunking=chunking, truncate=truncate, top_k=top_k
    )
    output = output or eval_dir(settings) / "runs"
    try:
        path = asyncio.run(_run(loaded, settings, options, list(url or []), output))
    except (EvalRuntimeError, RuntimeSetupError, RagError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    typer.echo(str(path))


@eval_app.command("compare")
def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="JSON reports; the first is the baseline.")],
    threshold: Annotated[
        float | None, typer.Option(help="Drop that counts as a regression (default setting).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG plot of the runs.")] = None,
) -> None:
    """Print the runs' metrics side by side against the first; exit 1 on a regression."""
    settings = _settings()
    try:
        reports = [load_report(path) for path in runs]
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    limit = settings.eval_regression_threshold if threshold is None else threshold
    comparison = compare_reports(reports, threshold=limit)
    typer.echo(comparison_markdown(comparison))
    if plot is not None:
        from eval.plot import plot_runs

        typer.echo(f"plot: {plot_runs(reports, plot)}")
    raise typer.Exit(1 if comparison.regressions else 0)
