"""``rag balancer``: serve a pool of llama-servers as one llama-server / OpenAI endpoint.

Settings come from the environment (``RAG_BALANCER_*``); an option overrides one only when it is
given on the command line.
"""

from __future__ import annotations

from typing import Annotated

import typer

from rag.balancer import balancer_settings
from rag.balancer.serve import serve
from rag.balancer.settings import DEFAULT_HOST, DEFAULT_PORT
from rag.core.pool.policy import POLICIES


def balancer(
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            "--upstream",
            help="llama-server base URL; repeat for each upstream (RAG_BALANCER_UPSTREAMS).",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(help=f"Listen address (RAG_BALANCER_HOST, default {DEFAULT_HOST})."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help=f"Listen port (RAG_BALANCER_PORT, default {DEFAULT_PORT}).")
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(help=f"Choice of upstream: {', '.join(POLICIES)} (RAG_BALANCER_POLICY)."),
    ] = None,
) -> None:
    """Run the slot-aware balancer in front of llama-servers (settings: RAG_BALANCER_*)."""
    if policy is not None and policy not in POLICIES:
        raise typer.BadParameter(f"choose one of {', '.join(POLICIES)}", param_hint="--policy")
    settings = balancer_settings(
        host=host, port=port, policy=policy, upstreams=list(upstream) if upstream else None
    )
    if not settings.upstreams:
        typer.echo("no upstream yet: register some with POST /v1/pool/upstreams", err=True)
    serve(settings)
