"""``rag``: run, serve, and manage the llama.cpp runtime.

The service's app (and with it ingestion, the vector store and their libraries) is imported by
the commands that serve it, so that ``rag balancer`` and ``rag runtime`` start light.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

import httpx
import typer
import uvicorn

from rag.cli.http import ApiKeyOption
from rag.cli.progress import console, stage_progress
from rag.core.errors import RuntimeSetupError
from rag.core.runtime.children import child_specs
from rag.core.runtime.prepare import PreparedRuntime, prepare_runtime
from rag.core.runtime.status import runtime_status
from rag.core.runtime.verify import verify_embedding_model
from rag.core.settings import Settings
from rag.web.server import server_options

app = typer.Typer(help="Self-hosted RAG service on llama.cpp.", no_args_is_help=True)
runtime_app = typer.Typer(help="Build llama-server, prepare models, show status.")
app.add_typer(runtime_app, name="runtime")

HostOption = Annotated[str | None, typer.Option(help="Listen address (RAG_HOST).")]
PortOption = Annotated[int | None, typer.Option(help="Listen port (RAG_PORT).")]


def _settings(**overrides: object) -> Settings:
    values = {key: value for key, value in overrides.items() if value is not None}
    settings = Settings(**values)  # type: ignore[arg-type]
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return settings


def _prepare(settings: Settings) -> PreparedRuntime:
    try:
        with stage_progress() as progress:
            return prepare_runtime(settings, progress)
    except RuntimeSetupError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def run(
    host: HostOption = None,
    port: PortOption = None,
    samples: Annotated[
        bool | None, typer.Option(help="Ingest the bundled sample documents at start-up.")
    ] = None,
) -> None:
    """Run everything on this machine: API, workers and supervised llama-server children."""
    from rag.api.app import create_app
    from rag.service.components import EmbeddedRuntime

    settings = _settings(host=host, port=port, ingest_samples=samples)
    prepared = _prepare(settings)
    specs = child_specs(settings, prepared.embedding_model, prepared.generation_model)
    runtime = EmbeddedRuntime(prepared.llama_server, specs)
    console.print(f"starting on http://{settings.host}:{settings.port} (API docs at /docs)")
    uvicorn.run(
        create_app(settings, runtime, run_workers=True),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        **server_options(settings.max_header_bytes, settings.header_read_timeout),
    )


@app.command()
def serve(host: HostOption = None, port: PortOption = None) -> None:
    """Run the API only, against llama.cpp servers given by RAG_EMBEDDING_URLS and
    RAG_GENERATION_URLS."""
    from rag.api.app import create_app

    settings = _settings(host=host, port=port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        **server_options(settings.max_header_bytes, settings.header_read_timeout),
    )


@app.command()
def worker() -> None:
    """Run ingestion workers only (shared PostgreSQL registry and Qdrant server)."""
    from rag.cli.worker import run_worker

    settings = _settings()
    asyncio.run(run_worker(settings))


@app.command("ingest")
def ingest_command(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to upload.")],
    url: Annotated[str, typer.Option(help="Base URL of the service.")] = "http://127.0.0.1:8000",
    collection: Annotated[str, typer.Option(help="Collection to upload into.")] = "default",
    metadata: Annotated[str | None, typer.Option(help="JSON object stored with each file.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the jobs.")] = 3600.0,
    api_key: ApiKeyOption = None,
) -> None:
    """Upload files or folders to a running service and show progress until they are indexed."""
    from rag.cli.ingest import ingest

    try:
        extra = json.loads(metadata) if metadata else None
        failed = ingest(
            paths,
            url=url,
            collection=collection,
            metadata=extra,
            timeout=timeout,
            api_key=api_key,
        )
    except (FileNotFoundError, ValueError, httpx.HTTPError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    raise typer.Exit(1 if failed else 0)


@runtime_app.command("build")
def runtime_build() -> None:
    """Build llama-server into the cache (once per version)."""
    settings = _settings()
    from rag.core.runtime.build import ensure_llama_server

    try:
        with stage_progress() as progress:
            binary = ensure_llama_server(settings, progress)
    except RuntimeSetupError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    typer.echo(str(binary))


@runtime_app.command("prepare")
def runtime_prepare(
    verify: Annotated[bool, typer.Option(help="Serve the embedding model and check it.")] = True,
) -> None:
    """Build llama-server and prepare both models, then check the embedding model."""
    settings = _settings()
    prepared = _prepare(settings)
    if verify:
        try:
            worst = asyncio.run(
                verify_embedding_model(settings, prepared.llama_server, prepared.embedding_model)
            )
        except RuntimeSetupError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        console.print(f"embedding model matches the reference (worst cosine {worst:.6f})")
    typer.echo(json.dumps(runtime_status(settings), indent=2))


@runtime_app.command("bundle")
def runtime_bundle(
    directory: Annotated[Path, typer.Argument(help="Folder to write the bundle into.")],
    wheels_python: Annotated[
        str | None,
        typer.Option(help="Also download the dependencies' wheels for this CPython (e.g. 3.12)."),
    ] = None,
) -> None:
    """Write an offline bundle (llama.cpp source, models, optionally wheels) for RAG_OFFLINE_DIR."""
    from rag.core.runtime.bundle import make_bundle

    settings = _settings()
    try:
        with stage_progress() as progress:
            manifest = make_bundle(
                settings, directory, wheels_python=wheels_python, progress=progress
            )
    except RuntimeSetupError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    typer.echo(f"{len(manifest['files'])} files in {directory}; use RAG_OFFLINE_DIR={directory}")


@runtime_app.command("status")
def runtime_status_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the llama-server binary and model paths, and whether they are ready."""
    status = runtime_status(Settings())
    if as_json:
        typer.echo(json.dumps(status))
        return
    for key, value in status.items():
        typer.echo(f"{key}: {value}")


from rag.cli.evaluate import eval_app  # noqa: E402

app.add_typer(eval_app, name="eval")

from rag.cli.store import store_app  # noqa: E402

app.add_typer(store_app, name="store")

from rag.cli.balancer import balancer  # noqa: E402

app.command()(balancer)

from rag.cli.ask import ask  # noqa: E402

app.command()(ask)

from rag.cli.keys import keys_app  # noqa: E402

app.add_typer(keys_app, name="keys")

from rag.cli.usage import usage_app  # noqa: E402

app.add_typer(usage_app, name="usage")
