"""Embeddings and exact token counts from llama.cpp embedding servers, through a pool.

Texts are sent in batches with several batches in flight, so that every slot of the embedding
servers stays busy; a failed batch (5xx, connection error, timeout) is retried with jittered
exponential backoff. Token lengths come from the server's own ``/tokenize``, which is exact for
whatever model is served (tiktoken is only an approximation of WordPiece).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any, Protocol

import httpx

from rag.errors import RagError, UpstreamFailed, UpstreamUnavailable


class _Transient(UpstreamFailed):
    """A 5xx from the embedding server: worth another try."""


class JsonUpstream(Protocol):
    """What the embedder needs of a pool: one JSON request with failover."""

    async def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response: ...


class Embedder:
    def __init__(
        self,
        upstream: JsonUpstream,
        *,
        batch_size: int = 32,
        concurrency: int = 4,
        max_attempts: int = 4,
        backoff: float = 0.5,
    ) -> None:
        self.upstream = upstream
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff = backoff

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts`` (each must fit the server's micro-batch), keeping their order."""
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        gate = asyncio.Semaphore(self.concurrency)

        async def one(batch: Sequence[str]) -> list[list[float]]:
            async with gate:
                body = await self._call("/v1/embeddings", {"input": list(batch)})
            rows = sorted(body["data"], key=lambda row: row["index"])
            if len(rows) != len(batch):
                raise UpstreamFailed(f"embedding server returned {len(rows)} of {len(batch)}")
            return [row["embedding"] for row in rows]

        results = await asyncio.gather(*(one(batch) for batch in batches))
        return [vector for batch in results for vector in batch]

    async def token_counts(self, texts: Sequence[str]) -> list[int]:
        """The served model's exact token count of each text (special tokens excluded)."""
        gate = asyncio.Semaphore(self.concurrency * 4)

        async def one(text: str) -> int:
            async with gate:
                body = await self._call("/tokenize", {"content": text})
            return len(body["tokens"])

        return list(await asyncio.gather(*(one(text) for text in texts)))

    async def _call(self, path: str, payload: dict[str, Any]) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self.upstream.request("POST", path, json=payload)
                if response.status_code >= 500:
                    raise _Transient(
                        f"embedding server answered HTTP {response.status_code}: "
                        f"{response.text[:200]}"
                    )
                if response.status_code >= 400:
                    raise UpstreamFailed(
                        f"embedding server rejected the request (HTTP {response.status_code}): "
                        f"{response.text[:200]}"
                    )
                return response.json()
            except (_Transient, UpstreamUnavailable, httpx.HTTPError) as exc:
                if attempt >= self.max_attempts:
                    if isinstance(exc, RagError):
                        raise
                    raise UpstreamUnavailable(f"embedding server unreachable: {exc}") from exc
                delay = self.backoff * 2 ** (attempt - 1)
                await asyncio.sleep(delay * (0.5 + random.random()))
