"""An embedder that cuts inputs at the model's token limit, as sentence-transformers does.

Production never truncates: the ingestion pipeline splits a chunk the model measures as too long
(``ingest.pipeline.fit_to_model``), so that no text goes unindexed. Published scores such as
all-MiniLM-L6-v2's nDCG@10 on SciFact were computed differently: one input per document, cut at
256 model tokens (``max_seq_length``), special tokens included. To reproduce them through the same
pipeline, :class:`TruncatingEmbedder` is handed to it in place of
:class:`rag.core.embeddings.Embedder`:

* ``token_counts`` reports lengths capped at the limit, so the pipeline splits nothing;
* ``embed`` tokenizes each text with the served model's own tokenizer (``/tokenize`` with
  ``add_special``), keeps the first ``max_tokens - 1`` ids and the closing special token
  (``[CLS] w1 … w254 [SEP]`` for BERT, exactly what the Hugging Face tokenizer's truncation
  gives), and sends the token ids to ``/v1/embeddings``, which embeds token arrays as they are.

Texts within the limit get the same ids the server would produce from the text itself, so their
vectors are unchanged. The stored chunk text stays the whole document (BM25 sees all of it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from rag.core.embeddings import Embedder, JsonUpstream


def truncate_ids(ids: list[int], max_tokens: int) -> list[int]:
    """Keep the first ``max_tokens - 1`` ids and the last one (the closing special token)."""
    if len(ids) <= max_tokens:
        return ids
    return [*ids[: max_tokens - 1], ids[-1]]


class TruncatingEmbedder(Embedder):
    """Embeds the first ``max_tokens`` model tokens of each text (special tokens included)."""

    special_tokens = 2

    def __init__(
        self, upstream: JsonUpstream, *, max_tokens: int, batch_size: int = 32, concurrency: int = 4
    ) -> None:
        super().__init__(upstream, batch_size=batch_size, concurrency=concurrency)
        if max_tokens < self.special_tokens + 1:
            raise ValueError("max_tokens must leave room for at least one token of text")
        self.max_tokens = max_tokens

    async def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Token counts capped at the limit: nothing is too long, because ``embed`` cuts."""
        limit = self.max_tokens - self.special_tokens
        return [min(count, limit) for count in await super().token_counts(texts)]

    async def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids from the served tokenizer, special tokens included."""
        gate = asyncio.Semaphore(self.concurrency * 4)

        async def one(text: str) -> list[int]:
            async with gate:
                body = await self._call("/tokenize", {"content": text, "add_special": True})
            return [int(token) for token in body["tokens"]]

        return list(await asyncio.gather(*(one(text) for text in texts)))

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        ids = [truncate_ids(row, self.max_tokens) for row in await self.token_ids(texts)]
        batches = [ids[i : i + self.batch_size] for i in range(0, len(ids), self.batch_size)]
        gate = asyncio.Semaphore(self.concurrency)

        async def one(batch: list[list[int]]) -> list[list[float]]:
            async with gate:
                body = await self._call("/v1/embeddings", {"input": batch})
            rows = sorted(body["data"], key=lambda row: row["index"])
            return [row["embedding"] for row in rows]

        results = await asyncio.gather(*(one(batch) for batch in batches))
        return [vector for batch in results for vector in batch]
