"""Embeddings and exact token counts from llama.cpp embedding servers, through a pool.

Texts from every caller go into one queue; a dispatcher sends them in batches of up to
``batch_size`` with up to ``concurrency`` batches in flight. While all slots are busy the queue
grows, so the next batch is fuller: many small documents ingested at once are embedded in batches
as large as one big document's (adaptive batching, no timer). Token lengths come from the
server's own ``/tokenize``, which is exact for whatever model is served (tiktoken is only an
approximation of WordPiece).

Lanes: the service builds two embedders (``rag/service/components.py``), one for ingestion and
one for queries (search, answers, citation checks), each with its own queue and gate. A query
never waits behind ingestion texts here; with embedding servers of its own (the query pool) it
does not wait behind them inside a llama-server either, which runs every input of a
``/v1/embeddings`` call as its own task in arrival order over all its slots.

Fairness: each text is queued for the tenant of the request that asked for it (the API key's
name, ``rag.core.pool.tenant``); batches take the queued texts one tenant at a time in turn, so
one team's burst of searches does not make another's query wait behind all of it, and each
batch goes to the pool as the tenant of its first text.

Usage: a text is billed to the :class:`Account` of the context that asked for it (the key and
collection of a search, an answer or an ingestion job: :func:`bill_to`, :func:`billed_to`). The
texts of one account in a batch go in one ``/v1/embeddings`` call (a batch of several accounts
is sent as one call per account), and the ``usage.prompt_tokens`` llama-server reports for it
goes to ``on_usage``: exact per account, never estimated. Texts of no account bill no one.

One retry layer: each call is sent once. The pool (``rag/core/pool``) fails over to another
upstream before the first byte and bounds the wait for a slot (its buffer: 429 when full, 503
after ``buffer_timeout``); retrying on top of it here would multiply that wait. Its errors pass
through unchanged, ``Retry-After`` included; ingestion jobs have their own retry (``retry_wait``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from rag.core.errors import UpstreamFailed, UpstreamUnavailable
from rag.core.pool.tenant import resolve_tenant, set_tenant

log = logging.getLogger(__name__)

MARKER_TOKEN = 0
"""Token id put after each text of a batched ``/tokenize`` call ([PAD] in BERT vocabularies)."""


@dataclass(frozen=True, slots=True)
class Account:
    """Whom embedding tokens are billed to: an API key (its id and name from the key store,
    never the secret) and a collection."""

    key_id: str
    key_name: str
    collection: str


UsageSink = Callable[[Account, int], None]
"""Called with an account and the tokens llama-server reported for one call of its texts."""

_account: ContextVar[Account | None] = ContextVar("embedding_account", default=None)


def bill_to(account: Account | None) -> Token[Account | None]:
    """Bill the embeddings of the current context (a request's or a job's task) to ``account``."""
    return _account.set(account)


@contextlib.contextmanager
def billed_to(account: Account | None) -> Iterator[None]:
    """Bill the embeddings made inside the block (and in tasks it starts) to ``account``."""
    token = _account.set(account)
    try:
        yield
    finally:
        _account.reset(token)


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
        on_usage: UsageSink | None = None,
    ) -> None:
        self.upstream = upstream
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.on_usage = on_usage
        self._accounts: dict[asyncio.Future[list[float]], Account] = {}  # of queued texts
        # texts waiting per tenant; the first tenant's turn is next
        self._queues: OrderedDict[str, deque[tuple[str, asyncio.Future[list[float]]]]] = (
            OrderedDict()
        )
        self._waiting = 0
        self._queued = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Texts waiting in this embedder's queue (not sent yet)."""
        return self._waiting

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts`` (each must fit the server's micro-batch), keeping their order."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        queue = self._queues.setdefault(resolve_tenant(None), deque())
        queue.extend(zip(texts, futures, strict=True))
        self._waiting += len(texts)
        if (account := _account.get()) is not None:
            self._accounts.update(dict.fromkeys(futures, account))
        self._queued.set()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch(), name="embedding-dispatcher")
        try:
            return list(await asyncio.gather(*futures))
        finally:
            if account is not None:
                for future in futures:
                    self._accounts.pop(future, None)

    async def close(self) -> None:
        tasks = [t for t in (self._dispatcher, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in self._queues.values():
            for _, future in queue:
                future.cancel()
        self._queues.clear()
        self._waiting = 0

    def _take(self) -> tuple[str, str, asyncio.Future[list[float]]]:
        """The next queued text: the oldest of the tenant whose turn it is, which goes last."""
        tenant, queue = self._queues.popitem(last=False)
        text, future = queue.popleft()
        self._waiting -= 1
        if queue:
            self._queues[tenant] = queue
        return tenant, text, future

    async def _dispatch(self) -> None:
        gate = asyncio.Semaphore(self.concurrency)
        while True:
            await self._queued.wait()
            await gate.acquire()
            batch: list[tuple[str, asyncio.Future[list[float]]]] = []
            tenant = ""
            while self._queues and len(batch) < self.batch_size:
                owner, text, future = self._take()
                if not future.done():  # its caller may have been cancelled
                    tenant = tenant if batch else owner
                    batch.append((text, future))
            if not self._queues:
                self._queued.clear()
            if not batch:
                gate.release()
                continue
            task = asyncio.create_task(self._send(batch, tenant))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            task.add_done_callback(lambda _: gate.release())

    async def _send(
        self, batch: list[tuple[str, asyncio.Future[list[float]]]], tenant: str
    ) -> None:
        set_tenant(tenant)  # this task's own context: the pool serves the batch as this tenant
        calls: dict[Account | None, list[tuple[str, asyncio.Future[list[float]]]]] = {}
        for text, future in batch:  # one call per account: llama-server counts per call
            calls.setdefault(self._accounts.get(future), []).append((text, future))
        await asyncio.gather(*(self._send_call(part, account) for account, part in calls.items()))

    async def _send_call(
        self, batch: list[tuple[str, asyncio.Future[list[float]]]], account: Account | None
    ) -> None:
        try:
            body = await self._call("/v1/embeddings", {"input": [text for text, _ in batch]})
            rows = sorted(body["data"], key=lambda row: row["index"])
            if len(rows) != len(batch):
                raise UpstreamFailed(f"embedding server returned {len(rows)} of {len(batch)}")
            if account is not None:
                self._bill(account, body.get("usage"))
        except asyncio.CancelledError:  # the embedder is closing
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), row in zip(batch, rows, strict=True):
            if not future.done():
                future.set_result(row["embedding"])

    def _bill(self, account: Account, usage: Any) -> None:
        """Hand llama-server's own count of a call's tokens to ``on_usage``."""
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if not isinstance(tokens, int):
            log.warning("the embedding server reported no usage; not counted for %s",
                        account.key_name)  # fmt: skip
            return
        if self.on_usage is not None:
            try:
                self.on_usage(account, tokens)
            except Exception:  # a count is never worth a failed embedding
                log.exception("recording embedding usage failed")

    async def token_counts(self, texts: Sequence[str]) -> list[int]:
        """The served model's exact token count of each text (special tokens excluded).

        One ``/tokenize`` call measures up to ``batch_size`` texts: llama-server tokenizes each
        string of a mixed content list on its own, so a marker token id after each text splits
        its answer into exact per-text counts. With ``parse_special`` off a text cannot yield a
        control token; if the marker still shows up elsewhere (a vocabulary where it is an
        ordinary token) the batch is measured text by text instead. Literal special-token
        strings in a text then count as their pieces: an overestimate, never an underestimate.
        """
        gate = asyncio.Semaphore(self.concurrency * 2)

        async def batch(part: Sequence[str]) -> list[int]:
            content: list[str | int] = []
            for text in part:
                content += [text, MARKER_TOKEN]
            async with gate:
                body = await self._call("/tokenize", {"content": content, "parse_special": False})
            tokens: list[int] = body["tokens"]
            ends = [index for index, token in enumerate(tokens) if token == MARKER_TOKEN]
            if len(ends) != len(part):
                return [await one(text) for text in part]
            return [end - start - 1 for start, end in zip([-1, *ends], ends, strict=False)]

        async def one(text: str) -> int:
            async with gate:
                body = await self._call("/tokenize", {"content": text})
            return len(body["tokens"])

        size = self.batch_size
        parts = [texts[i : i + size] for i in range(0, len(texts), size)]
        counts = await asyncio.gather(*(batch(part) for part in parts))
        return [count for part in counts for count in part]

    async def _call(self, path: str, payload: dict[str, Any]) -> Any:
        """One request, no retry: a pool has failed over already; its errors pass unchanged."""
        try:
            response = await self.upstream.request("POST", path, json=payload)
        except httpx.HTTPError as exc:  # an upstream that is not a pool (tests, tools)
            raise UpstreamUnavailable(f"embedding server unreachable: {exc}") from exc
        if response.status_code >= 400:
            verb = "failed" if response.status_code >= 500 else "rejected the request"
            raise UpstreamFailed(
                f"embedding server {verb} (HTTP {response.status_code}): {response.text[:200]}"
            )
        return response.json()
