"""``rag ask "QUESTION"``: stream an answer from a running service to the terminal, then list the
cited sources (and say which citations the service found unsupported by their source)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer

from rag.cli.http import ApiKeyOption, auth_headers, error_text

EXIT_OK, EXIT_ANSWER_FAILED, EXIT_REQUEST_FAILED = 0, 1, 2


def ask(
    question: Annotated[str, typer.Argument(help="The question to answer.")],
    collection: Annotated[str, typer.Option(help="Collection to search.")] = "default",
    url: Annotated[str, typer.Option(help="Base URL of the service.")] = "http://127.0.0.1:8000",
    top_k: Annotated[int | None, typer.Option(help="Sources to retrieve.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait between two events.")] = 120.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the final object as JSON.")
    ] = False,
    api_key: ApiKeyOption = None,
) -> None:
    """Ask a question about the documents of a running service; the answer streams as it is
    generated, followed by the cited sources."""
    body: dict[str, Any] = {"question": question, "collection": collection, "stream": True}
    if top_k is not None:
        body["top_k"] = top_k
    limits = httpx.Timeout(connect=5.0, read=timeout, write=10.0, pool=5.0)
    try:
        with (
            httpx.Client(timeout=limits, headers=auth_headers(api_key)) as http,
            http.stream("POST", f"{url.rstrip('/')}/v1/answer", json=body) as response,
        ):
            if response.status_code != 200:
                response.read()
                typer.echo(f"error: {error_text(response)}", err=True)
                raise typer.Exit(EXIT_REQUEST_FAILED)
            code = _show(read_events(response.iter_lines()), as_json=as_json)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the service at {url}: {exc}", err=True)
        raise typer.Exit(EXIT_REQUEST_FAILED) from exc
    raise typer.Exit(code)


def read_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Server-Sent Events as (event, data) pairs, as the lines arrive."""
    name, data = "message", ""
    for line in lines:
        if not line:
            if data:
                yield name, json.loads(data)
            name, data = "message", ""
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
    if data:
        yield name, json.loads(data)


def _show(events: Iterator[tuple[str, dict[str, Any]]], *, as_json: bool) -> int:
    for name, data in events:
        if name == "delta" and not as_json:
            typer.echo(data.get("text", ""), nl=False)
        elif name == "answer":
            if as_json:
                typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
            else:
                typer.echo("")
                _show_sources(data)
        elif name == "error":
            typer.echo(f"\nerror: {data.get('message', 'the answer failed')}", err=True)
            return EXIT_ANSWER_FAILED
        elif name == "done":
            return EXIT_OK
    typer.echo("\nerror: the answer stream ended early", err=True)
    return EXIT_ANSWER_FAILED


def _show_sources(final: dict[str, Any]) -> None:
    if final.get("dont_know"):
        return
    sources = {source["n"]: source for source in final.get("sources", [])}
    unsupported = set(final.get("unsupported_citations", []))
    typer.echo("\nSources:")
    for n in final.get("citations", []):
        source = sources.get(n, {})
        where = source.get("filename") or source.get("document_id", "?")
        if source.get("page") is not None:
            where += f", page {source['page']}"
        note = "  (not supported by this source's text)" if n in unsupported else ""
        typer.echo(f"  [{n}] {where}{note}")
