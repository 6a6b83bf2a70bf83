"""Progress display of long set-up steps (build, model preparation)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from rag.core.runtime.build import Progress as ProgressCallback

console = Console(stderr=True)


@contextmanager
def stage_progress() -> Iterator[ProgressCallback]:
    """A callback ``(stage, fraction)`` drawing one bar per stage (a spinner when unknown)."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bars:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, fraction: float | None) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=100 if fraction is not None else None)
            if fraction is not None:
                bars.update(tasks[stage], total=100, completed=fraction * 100)

        yield update
        for task in tasks.values():
            if bars.tasks[task].total is None:
                bars.update(task, total=100, completed=100)
