"""BM25-style sparse vectors, stored in Qdrant beside the dense ones for hybrid retrieval.

Documents get the BM25 term-frequency part, ``tf·(k1+1) / (tf + k1·(1 - b + b·len/avg_len))``;
Qdrant supplies the IDF part at query time (``Modifier.IDF`` on the sparse vector), so the
collection needs no global statistics kept here. Queries get weight 1 per distinct term. Terms
are lowercased word tokens minus English stop words, mapped to indices by a stable 31-bit hash
(collisions are rare at this size and only merge two terms' weights). The same recipe as
fastembed's ``Qdrant/bm25`` without its stemmer and model download.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter

K1 = 1.2
B = 0.75
AVG_LEN = 256.0
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOP_WORDS = frozenset(
    """
    a an and are as at be but by for if in into is it its no not of on or such that the their
    then there these they this to was will with we you he she his her our from has have had
    were been which who what when where how than so do does did can could should would may
    might i me my us them those also
    """.split()  # noqa: SIM905 - a paragraph of words reads better than a list of strings
)


def terms(text: str) -> list[str]:
    return [w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in STOP_WORDS]


def term_index(term: str) -> int:
    return zlib.crc32(term.encode("utf-8")) & 0x7FFFFFFF


def document_vector(text: str) -> tuple[list[int], list[float]]:
    words = terms(text)
    counts = Counter(term_index(w) for w in words)
    norm = K1 * (1 - B + B * len(words) / AVG_LEN)
    indices = sorted(counts)
    return indices, [counts[i] * (K1 + 1) / (counts[i] + norm) for i in indices]


def query_vector(text: str) -> tuple[list[int], list[float]]:
    indices = sorted({term_index(w) for w in terms(text)})
    return indices, [1.0] * len(indices)
