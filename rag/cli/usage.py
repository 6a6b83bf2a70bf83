"""``rag usage report``: tokens and cost per team (API key name) since a day, read from the
service's registry database (RAG_DATABASE_URL, or the SQLite file of RAG_DATA_DIR), with a plot
of the tokens each team used per day. No running service needed; the prices are the settings'
``RAG_PRICE_PER_1K_*`` and ``RAG_PRICE_CURRENCY``.

Rows are kept per UTC day, so ``--since 24h`` covers the days the last 24 hours touch.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from ingest.registry import Prices, UsageRow, UsageStore, total
from rag.cli.registry import on_registry
from rag.core.settings import Settings
from rag.service.usage import prices

usage_app = typer.Typer(help="Token usage and cost per team, from the registry database.")

PERIOD = re.compile(r"(\d{1,5})([hd])")


def parse_since(value: str, *, now: datetime | None = None) -> date:
    """The first day of ``value``: ``7d``, ``24h`` (counted back from now, UTC) or an ISO date."""
    text = value.strip().lower()
    if match := PERIOD.fullmatch(text):
        amount, unit = int(match[1]), match[2]
        span = timedelta(days=amount) if unit == "d" else timedelta(hours=amount)
        return ((now or datetime.now(UTC)) - span).date()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither a period (7d, 24h, 30d) nor a date (2026-12-01)"
        ) from None


@dataclass
class Team:
    """One team's (one key name's) sums over the period."""

    name: str
    rows: list[UsageRow]

    def figures(self, price: Prices) -> dict[str, Any]:
        return {"team": self.name, **total(self.rows, price)}


def by_team(rows: list[UsageRow]) -> list[Team]:
    """The rows grouped by key name (a team's rotated keys share it), busiest team first."""
    groups: dict[str, list[UsageRow]] = defaultdict(list)
    for row in rows:
        groups[row.key_name].append(row)
    teams = [Team(name, group) for name, group in groups.items()]
    return sorted(teams, key=lambda t: (-sum(_tokens(r) for r in t.rows), t.name))


def _tokens(row: UsageRow) -> int:
    return row.prompt_tokens + row.completion_tokens + row.embedding_tokens


def format_table(teams: list[Team], price: Prices) -> str:
    """The per-team table, with a total line."""
    head = ("team", "requests", "prompt", "completion", "embedding", f"cost ({price.currency})")
    lines = [[str(value) for value in _cells(team.figures(price))] for team in teams]
    every = [row for team in teams for row in team.rows]
    lines.append([str(value) for value in _cells({"team": "total", **total(every, price)})])
    widths = [max(len(cells[i]) for cells in [list(head), *lines]) for i in range(len(head))]

    def line(cells: list[str] | tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *map(line, lines[:-1]), rule, line(lines[-1])])


def _cells(figures: dict[str, Any]) -> list[object]:
    return [
        figures["team"],
        figures["requests"],
        figures["prompt_tokens"],
        figures["completion_tokens"],
        figures["embedding_tokens"],
        f"{figures['cost']:.6f}".rstrip("0").rstrip(".") if figures["cost"] else "0",
    ]


def plot(teams: list[Team], since: date, until: date, path: Path) -> None:
    """A PNG of the tokens (prompt + completion + embedding) each team used per day."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display

    days = [(since + timedelta(days=n)).isoformat() for n in range((until - since).days + 1)]
    figure = Figure(figsize=(9, 4.5), layout="constrained")
    axes = figure.subplots()
    for team in teams:
        per_day: dict[str, int] = defaultdict(int)
        for row in team.rows:
            per_day[row.day] += _tokens(row)
        axes.plot(days, [per_day.get(day, 0) for day in days], marker="o", label=team.name)
    axes.set_title(f"Tokens per day and team, {since.isoformat()} to {until.isoformat()} (UTC)")
    axes.set_ylabel("tokens (prompt + completion + embedding)")
    axes.set_ylim(bottom=0)
    if teams:
        axes.legend(loc="upper left", fontsize="small")
    figure.autofmt_xdate()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)


def _rows(settings: Settings, since: date) -> list[UsageRow]:
    return on_registry(settings, lambda engine: UsageStore(engine).totals(since=since))


@usage_app.command("report")
def report_command(
    since: Annotated[
        str, typer.Option(help="From when: 7d, 24h, 30d (back from now) or a date (2026-12-01).")
    ] = "7d",
    plot_path: Annotated[
        Path, typer.Option("--plot", help="Where to write the PNG of tokens per day and team.")
    ] = Path("usage.png"),
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder (default: RAG_DATA_DIR).", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Requests, prompt, completion and embedding tokens and their cost per team."""
    first = parse_since(since)
    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    price = prices(settings)
    teams = by_team(_rows(settings, first))
    plot(teams, first, datetime.now(UTC).date(), plot_path)
    if as_json:
        every = [row for team in teams for row in team.rows]
        body = {
            "since": first.isoformat(),
            "currency": price.currency,
            "teams": [team.figures(price) for team in teams],
            "totals": total(every, price),
            "plot": str(plot_path),
        }
        typer.echo(json.dumps(body))
        return
    typer.echo(f"usage since {first.isoformat()} (UTC days)")
    typer.echo(format_table(teams, price))
    typer.echo(f"plot: {plot_path}")
