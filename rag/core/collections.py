"""Names of collections: what a valid one looks like, checked wherever one comes in."""

from __future__ import annotations

import re

from rag.core.errors import InvalidRequest

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_collection(name: str) -> str:
    """``name`` itself when it is a valid collection name; otherwise ``InvalidRequest``."""
    if not COLLECTION_NAME.match(name):
        raise InvalidRequest(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name
