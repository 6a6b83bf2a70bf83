"""``rag keys``: create, list and revoke the service's API keys, in its registry database
(RAG_DATABASE_URL, or the SQLite file of RAG_DATA_DIR): no running service needed."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ingest.registry import KeyStore
from rag.cli.registry import on_registry
from rag.core.settings import Settings

keys_app = typer.Typer(help="API keys of the service: create (shown once), list, revoke.")
T = TypeVar("T")
DataDir = Annotated[
    Path | None, typer.Option(help="Data folder (default: RAG_DATA_DIR).", show_default=False)
]


def _with_keys(data_dir: Path | None, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})

    return on_registry(settings, lambda engine: work(KeyStore(engine)))


@keys_app.command("create")
def create_command(
    name: Annotated[str, typer.Option(help="Who holds the key (the team).")],
    collection: Annotated[
        list[str], typer.Option(help="A collection, a prefix ending in '*', or '*' (repeat).")
    ],
    scope: Annotated[
        list[str] | None, typer.Option(help="read, write or admin (repeat); default read.")
    ] = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a key; its secret is printed once and stored only as a hash."""
    token, key = _with_keys(
        data_dir,
        lambda keys: keys.create(name=name, scopes=scope or ["read"], collections=collection),
    )
    if as_json:
        typer.echo(json.dumps({**key.to_api(), "key": token}))
        return
    typer.echo(f"key {key.id} for {key.name}: scopes {','.join(key.scopes)}, "
               f"collections {','.join(key.collections)}")  # fmt: skip
    typer.echo(token)
    typer.echo("(shown once: store it now)", err=True)


@keys_app.command("list")
def list_command(
    data_dir: DataDir = None,
    include_revoked: Annotated[bool, typer.Option(help="Revoked keys too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The keys (ids, names, scopes, collections; never their secrets)."""
    keys = _with_keys(data_dir, lambda store: store.list(include_revoked=include_revoked))
    rows: list[dict[str, Any]] = [key.to_api() for key in keys]
    if as_json:
        typer.echo(json.dumps({"keys": rows}))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "live"
        typer.echo(
            f"{row['id']}  {row['name']:<20} {row['prefix']}…  {','.join(row['scopes']):<16} "
            f"{','.join(row['collections'])}  {state}"
        )


@keys_app.command("revoke")
def revoke_command(key_id: Annotated[str, typer.Argument()], data_dir: DataDir = None) -> None:
    """Revoke a key: every replica refuses it within RAG_AUTH_CACHE_SECONDS (1 s)."""
    key = _with_keys(data_dir, lambda store: store.revoke(key_id))
    if key is None:
        typer.echo(f"error: no key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key.id} ({key.name})")
