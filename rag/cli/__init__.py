"""The ``rag`` command line: one entry point, one module per command group."""

from __future__ import annotations

from rag.cli.main import app


def main() -> None:
    app()


__all__ = ["app", "main"]
