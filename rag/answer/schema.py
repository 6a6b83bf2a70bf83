"""The answer object the model must produce: its JSON schema, the grammar that enforces it, and
the validation of what came back.

The schema is the contract (``answer``: a non-empty string of at most ``max_chars`` characters;
``citations``: one or more numbers of the sources actually given). llama.cpp's own JSON-schema
grammar allows free whitespace between tokens, which a small model fills with newlines and tabs
(tens of wasted tokens); ``answer_grammar`` writes the same constraints as a GBNF grammar without
it. Whatever the grammar, the output is validated here again: an object that does not conform is
an error, never an answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ANSWER_OVERHEAD_TOKENS = 12
"""Tokens of the object around the answer text: ``{"answer": "``, ``", "citations": [``, ``]}``."""
MIN_CHARS_PER_TOKEN = 3
"""Conservative characters per generated token, to size ``maxLength`` within ``n_predict``."""


class InvalidAnswer(ValueError):
    """The generated text is not an answer object that conforms to the schema."""


@dataclass(frozen=True)
class ModelAnswer:
    answer: str
    citations: list[int]


def answer_char_limit(max_tokens: int, max_chars: int, sources: int) -> int:
    """``maxLength`` of the answer text that fits in ``max_tokens`` together with the rest of the
    object (so that the token limit does not cut the object off), at most ``max_chars``."""
    overhead = ANSWER_OVERHEAD_TOKENS + 2 * sources
    return max(1, min(max_chars, MIN_CHARS_PER_TOKEN * (max_tokens - overhead)))


def answer_schema(numbers: Sequence[int], max_chars: int) -> dict[str, Any]:
    """The JSON schema of the answer object with citations limited to ``numbers``."""
    if not numbers:
        raise ValueError("an answer schema needs at least one source number")
    return {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "minLength": 1, "maxLength": max_chars},
            "citations": {
                "type": "array",
                "items": {"type": "integer", "enum": sorted(set(numbers))},
                "minItems": 1,
                "maxItems": len(set(numbers)),
            },
        },
        "required": ["answer", "citations"],
        "additionalProperties": False,
    }


def answer_grammar(numbers: Sequence[int], max_chars: int) -> str:
    """A GBNF grammar for exactly the objects ``answer_schema`` accepts, in compact form."""
    if not numbers:
        raise ValueError("an answer grammar needs at least one source number")
    allowed = sorted(set(numbers))
    cite = " | ".join(f'"{n}"' for n in allowed)
    more = f'("," " "? cite){{0,{len(allowed) - 1}}}' if len(allowed) > 1 else ""
    return (
        f'root ::= "{{\\"answer\\": \\"" char{{1,{max_chars}}} '
        f'"\\", \\"citations\\": [" cite {more} "]}}"\n'
        'char ::= [^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})\n'
        f"cite ::= {cite}\n"
    )


def validate_answer(text: str, schema: dict[str, Any]) -> ModelAnswer:
    """Parse ``text`` and check it against ``schema`` (as written by ``answer_schema``).

    Raises ``InvalidAnswer`` naming the first problem. Repeated citations are kept once, in order.
    """
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidAnswer(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidAnswer("not a JSON object")
    properties = schema["properties"]
    extra = set(value) - set(properties)
    if extra:
        raise InvalidAnswer(f"unexpected keys {sorted(extra)}")
    missing = [key for key in schema["required"] if key not in value]
    if missing:
        raise InvalidAnswer(f"missing keys {missing}")
    answer = value["answer"]
    limits = properties["answer"]
    if not isinstance(answer, str):
        raise InvalidAnswer("answer is not a string")
    if not answer.strip():
        raise InvalidAnswer("answer is empty")
    if len(answer) > limits["maxLength"]:
        raise InvalidAnswer(f"answer is longer than {limits['maxLength']} characters")
    citations = value["citations"]
    rules = properties["citations"]
    if not isinstance(citations, list):
        raise InvalidAnswer("citations is not a list")
    if len(citations) < rules["minItems"]:
        raise InvalidAnswer("citations is empty")
    allowed = set(rules["items"]["enum"])
    for number in citations:
        if isinstance(number, bool) or not isinstance(number, int) or number not in allowed:
            raise InvalidAnswer(f"citation {number!r} is not one of the sources {sorted(allowed)}")
    unique = list(dict.fromkeys(citations))
    if len(unique) > rules["maxItems"]:
        raise InvalidAnswer("too many citations")
    return ModelAnswer(answer=answer, citations=unique)
