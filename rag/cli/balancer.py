"""``rag balancer``: serve a pool of llama-servers as one llama-server / OpenAI endpoint."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
import uvicorn

from rag.pool.policy import POLICIES


def balancer(
    upstream: Annotated[
        list[str] | None,
        typer.Option("--upstream", help="llama-server base URL; repeat for each upstream."),
    ] = None,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 8090,
    policy: Annotated[
        str, typer.Option(help=f"Choice of upstream: {', '.join(POLICIES)}.")
    ] = "slots",
) -> None:
    """Run the slot-aware balancer in front of llama-servers (settings: RAG_BALANCER_*)."""
    from rag.balancer import BalancerSettings, create_balancer_app

    if policy not in POLICIES:
        raise typer.BadParameter(f"choose one of {', '.join(POLICIES)}", param_hint="--policy")
    overrides: dict[str, object] = {"host": host, "port": port, "policy": policy}
    if upstream:
        overrides["upstreams"] = list(upstream)
    settings = BalancerSettings(**overrides)  # type: ignore[arg-type]
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call and poll
    if not settings.upstreams:
        typer.echo("no upstream yet: register some with POST /v1/pool/upstreams", err=True)
    uvicorn.run(
        create_balancer_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",  # a line per request costs ~10% of the CPU
        server_header=False,  # the upstream's own Server header passes through
        proxy_headers=False,  # X-Forwarded-* go upstream unchanged; nothing here reads them
    )
