"""The registry database for a CLI command that needs no running service (``rag keys``,
``rag usage``): connect, run one piece of work on its engine, close; a ``RagError`` becomes a
message and exit code 2."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from ingest.registry import Registry
from rag.core.errors import RagError
from rag.core.settings import Settings

T = TypeVar("T")


def on_registry(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """``work(engine)`` on the registry of ``settings`` (RAG_DATABASE_URL or RAG_DATA_DIR's)."""

    async def run() -> T:
        registry = await Registry.connect(settings.registry_url, schema=settings.database_schema)
        try:
            return await work(registry.engine)
        finally:
            await registry.close()

    try:
        return asyncio.run(run())
    except RagError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
