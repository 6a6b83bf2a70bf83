"""``rag store``: the vector store the settings choose: what it holds, migration, indexing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from rag.core.runtime.paths import EMBEDDING_DIMENSIONS
from rag.core.settings import Settings
from rag.core.store.migrate import MigrationError, has_local_data, migrate_local
from rag.core.vectorstore import VectorStore, backend_of

store_app = typer.Typer(help="The vector store: info, migration from local mode, indexing.")
DataDir = Annotated[
    Path | None, typer.Option(help="Data folder (default: RAG_DATA_DIR).", show_default=False)
]


def _settings(data_dir: Path | None) -> Settings:
    settings = Settings()
    return settings.model_copy(update={"data_dir": data_dir}) if data_dir else settings


@store_app.command("info")
def info_command(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The backend, and the points of each collection."""
    settings = _settings(data_dir)

    async def gather() -> dict[str, Any]:
        store = VectorStore.from_settings(settings, dimensions=EMBEDDING_DIMENSIONS)
        try:
            names = await store.collections()
            counts = {name: await store.count(name.removeprefix("rag_")) for name in names}
        finally:
            await store.close()
        return {"backend": store.name, "collections": counts}

    result = asyncio.run(gather())
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"backend: {result['backend']}")
    for name, count in result["collections"].items():
        typer.echo(f"{name}: {count} points")


@store_app.command("migrate")
def migrate_command(data_dir: DataDir = None) -> None:
    """Convert DATA_DIR/qdrant (qdrant-client local mode) into the embedded store, DATA_DIR/edge.

    Counts are checked per collection; the new folder appears only when all is copied, and the
    local-mode folder is left as it was. Stop the service first: both folders are locked by it.
    """
    settings = _settings(data_dir)
    source, target = settings.data_dir / "qdrant", settings.data_dir / "edge"
    if not has_local_data(source):
        typer.echo(f"nothing to migrate: no local-mode collections in {source}")
        raise typer.Exit(1)

    def progress(collection: str, done: int, total: int) -> None:
        if done == total or done % 10_240 == 0:
            typer.echo(f"{collection}: {done}/{total}")

    try:
        moved = migrate_local(source, target, dimensions=EMBEDDING_DIMENSIONS, progress=progress)
    except MigrationError as exc:
        typer.echo(f"migration failed: {exc}")
        raise typer.Exit(1) from exc
    typer.echo(f"migrated {moved} points into {target}; {source} is unchanged")
    if backend_of(settings) != "edge":
        typer.echo("the settings choose another backend: set RAG_VECTOR_STORE=edge to use it")


@store_app.command("optimize")
def optimize_command(data_dir: DataDir = None) -> None:
    """Build the indexes of everything written so far (the service does it when idle)."""
    settings = _settings(data_dir)

    async def run() -> None:
        store = VectorStore.from_settings(settings, dimensions=EMBEDDING_DIMENSIONS)
        try:
            await store.optimize()
        finally:
            await store.close()

    asyncio.run(run())
    typer.echo("indexed")
