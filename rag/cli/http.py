"""What the CLI commands that talk to a running service share."""

from __future__ import annotations

from typing import Annotated

import httpx
import typer

ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="RAG_API_KEY",
        help="API key of the service (RAG_API_KEY).",
        show_default=False,
    ),
]


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer KEY`` when a key is given."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def error_text(response: httpx.Response) -> str:
    """The service's error message (``{"error": {"type", "message"}}``), or the bare status."""
    try:
        error = response.json()["error"]
        return f"{error['message']} ({error['type']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
