"""The check of each citation after generation: is the cited source about what the answer says?

The grammar guarantees that a citation names a source the model was given, not that the source
supports the answer (small models cite every source, or the wrong one). Each cited source is
compared with the answer by the cosine similarity of their embeddings (the embedding model of the
collection, through the embedding pool; its vectors are L2-normalised, so the dot product is the
cosine). Citations below the threshold are reported as unsupported, not removed: the client
decides. If the embedding servers cannot be reached the answer is still given, marked unchecked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rag.core.embeddings import Embedder
from rag.core.errors import RagError

log = logging.getLogger(__name__)

MAX_CHECKED_CHARS = 1000
"""Longest prefix of the answer that is embedded (embedding inputs must fit one micro-batch)."""


@dataclass(frozen=True)
class CitationCheck:
    scores: dict[int, float] = field(default_factory=dict)
    unsupported: list[int] = field(default_factory=list)
    checked: bool = False


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm_a = sum(x * x for x in a) ** 0.5
    norm_b = sum(y * y for y in b) ** 0.5
    return dot / (norm_a * norm_b) if norm_a and norm_b else 0.0


async def check_citations(
    embedder: Embedder, answer: str, cited: dict[int, str], *, threshold: float
) -> CitationCheck:
    """Score ``answer`` against each cited source text (``{number: text}``)."""
    if not cited:
        return CitationCheck(checked=True)
    numbers = list(cited)
    try:
        vectors = await embedder.embed([answer[:MAX_CHECKED_CHARS], *(cited[n] for n in numbers)])
    except RagError as exc:
        log.warning("citations not checked: %s", exc.message)
        return CitationCheck()
    scores = {
        n: round(cosine(vectors[0], vector), 4)
        for n, vector in zip(numbers, vectors[1:], strict=True)
    }
    unsupported = [n for n in numbers if scores[n] < threshold]
    return CitationCheck(scores=scores, unsupported=unsupported, checked=True)
