"""What the CLI commands that talk to a running service share."""

from __future__ import annotations

import httpx


def error_text(response: httpx.Response) -> str:
    """The service's error message (``{"error": {"type", "message"}}``), or the bare status."""
    try:
        error = response.json()["error"]
        return f"{error['message']} ({error['type']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
