"""The layout every backend stores, without qdrant-client: the store process imports only this.

A named dense vector (``dense``, cosine) and a sparse BM25 vector (``sparse``, IDF applied by the
engine); keyword indexes on ``document_id`` and ``filename``, integer ones on ``page`` and
``chunk_index``; hybrid search as RRF of two candidate lists of ``top_k x PREFETCH_FACTOR``.
(``qdrant_client`` takes 0.75 s to import: most of the store process's start before it did.)
"""

from __future__ import annotations

DENSE = "dense"
SPARSE = "sparse"
KEYWORD_FIELDS = ("document_id", "filename")
INTEGER_FIELDS = ("page", "chunk_index")
RRF_K = 2  # qdrant-client's and Qdrant's default ranking constant
PREFETCH_FACTOR = 4  # hybrid: each candidate list holds top_k x 4
