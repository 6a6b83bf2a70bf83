"""Usage as it happens: the tokens of searches, answers and ingestion, per API key and
collection, into the registry's usage rows and the Prometheus counters by key name.

Every figure is llama-server's own: an answer's ``usage`` (``tokens_evaluated``,
``tokens_predicted``), and the ``usage.prompt_tokens`` of each ``/v1/embeddings`` answer, which
the embedders hand to :meth:`UsageRecorder.embedded` for the account of their batch
(``rag.core.embeddings``). Answers are added to the registry at once (the daily token budget
reads them); searches and embeddings are summed in memory and added every ``flush_seconds`` in
one transaction, and on close, so that a search costs no registry write. A registry outage
keeps the sums for the next flush; a crashed process loses at most one interval of them.

The counter ``rag_tokens_total{key, kind}`` is labelled by the key's name from the key store
(a bounded set, never the secret nor anything a client sends) and the kind of token
(``prompt``, ``completion``, ``embedding``); collections, which clients name, are not labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from prometheus_client import Counter

from ingest.registry import Prices, UsageRow, UsageStore
from rag.core.embeddings import Account
from rag.core.errors import RagError
from rag.core.settings import Settings

log = logging.getLogger(__name__)

TOKEN_KINDS = ("prompt", "completion", "embedding")


def prices(settings: Settings) -> Prices:
    """The settings' prices per 1,000 tokens and their currency."""
    return Prices(
        prompt=settings.price_per_1k_prompt_tokens,
        completion=settings.price_per_1k_completion_tokens,
        embedding=settings.price_per_1k_embedding_tokens,
        currency=settings.price_currency,
    )


@dataclass
class _Sums:
    key_name: str
    requests: int = 0
    embedding_tokens: int = 0


class UsageRecorder:
    """What this process used, on its way to the registry and to ``tokens`` (the counter)."""

    def __init__(
        self,
        store: UsageStore,
        tokens: Counter,
        *,
        flush_seconds: float = 1.0,
        today: Callable[[], date] | None = None,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.flush_seconds = flush_seconds
        self._today = today or (lambda: store.now().date())
        self._pending: dict[tuple[str, str, str], _Sums] = {}  # (day, key id, collection)
        self._flusher: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    def embedded(self, account: Account, tokens: int) -> None:
        """The embedders' sink: ``tokens`` (llama-server's count of one batch) for ``account``."""
        self._sums(account).embedding_tokens += max(0, tokens)
        self.tokens.labels(account.key_name, "embedding").inc(max(0, tokens))

    def searched(self, account: Account) -> None:
        """One search (its query's tokens come through :meth:`embedded`)."""
        self._sums(account).requests += 1

    async def answered(self, account: Account, prompt_tokens: int, completion_tokens: int) -> None:
        """One answer and its tokens, added to the registry now; a registry outage loses this
        count, never the answer."""
        self.tokens.labels(account.key_name, "prompt").inc(max(0, prompt_tokens))
        self.tokens.labels(account.key_name, "completion").inc(max(0, completion_tokens))
        try:
            await self.store.record(
                key_id=account.key_id,
                key_name=account.key_name,
                collection=account.collection,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        except RagError as exc:
            log.warning("usage of key %s not recorded: %s", account.key_name, exc.message)

    def _sums(self, account: Account) -> _Sums:
        slot = (self._today().isoformat(), account.key_id, account.collection)
        sums = self._pending.get(slot)
        if sums is None:
            sums = self._pending[slot] = _Sums(account.key_name)
        return sums

    async def flush(self) -> None:
        """Add what was summed since the last flush to the registry (kept for the next one if
        the registry does not answer)."""
        async with self._flushing:
            pending, self._pending = self._pending, {}
            rows = [
                UsageRow(
                    day=day,
                    key_id=key_id,
                    key_name=sums.key_name,
                    collection=collection,
                    requests=sums.requests,
                    prompt_tokens=0,
                    completion_tokens=0,
                    embedding_tokens=sums.embedding_tokens,
                )
                for (day, key_id, collection), sums in pending.items()
            ]
            try:
                await self.store.add(rows)
            except RagError as exc:
                log.warning("usage not recorded yet (%d rows kept): %s", len(rows), exc.message)
                for slot, sums in pending.items():
                    kept = self._pending.setdefault(slot, _Sums(sums.key_name))
                    kept.requests += sums.requests
                    kept.embedding_tokens += sums.embedding_tokens

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_every(), name="usage-flusher")

    async def close(self) -> None:
        """Stop flushing on a timer and flush what is left."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except Exception:  # the next interval tries again
                log.exception("flushing usage failed")
