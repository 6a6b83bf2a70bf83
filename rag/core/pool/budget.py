"""The token budget of a generation request: the most tokens it may still generate.

llama.cpp's ``n_predict``, the OpenAI ``max_tokens`` / ``max_completion_tokens`` (and the
Responses API's ``max_output_tokens``; Anthropic's Messages API says ``max_tokens``) cap a
generation; the scheduler uses the cap, minus the tokens streamed so far, to see a slot about to
free (``scheduler.py``, early handoff). A request without a cap (or with ``-1``: until the end of
the context) has no budget: its slot is handed on only when it is released.
"""

from __future__ import annotations

from typing import Any

BUDGET_KEYS = ("n_predict", "max_tokens", "max_completion_tokens", "max_output_tokens")


def token_budget(body: Any) -> int | None:
    """The generation cap of a request body, or None when it sets none."""
    if not isinstance(body, dict):
        return None
    for key in BUDGET_KEYS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def stream_events(chunk: bytes) -> int:
    """Server-sent events in a chunk of a streamed answer: one per generated token (llama-server
    sends one ``data:`` line per token, plus one at the end)."""
    return chunk.count(b"data:")
