"""The embedder's batching, ordering and errors (sent once: the pool is the one retry layer),
against an upstream faked at the HTTP boundary (httpx.MockTransport); token counts also against
the real embedding server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from rag.core.embeddings import Embedder
from rag.core.errors import RateLimited, UpstreamFailed, UpstreamUnavailable
from rag.core.pool.tenant import current_tenant, set_tenant
from tests.conftest import RunningServer

VOCABULARY = {"zero": 0}
"""Word ids of the fake tokenizer: "zero" is id 0 (the embedder's marker), any other word 7."""


class Upstream:
    """Answers like llama.cpp's /v1/embeddings and /tokenize after ``failures`` 503s."""

    def __init__(self, failures: int = 0, status: int = 503) -> None:
        self.failures = failures
        self.status = status
        self.calls: list[dict[str, Any]] = []
        self.client = httpx.AsyncClient(
            transport=httpx.MockTransport(self.handle), base_url="http://upstream"
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append(body)
        if self.failures > 0:
            self.failures -= 1
            return httpx.Response(self.status, json={"error": {"message": "busy"}})
        if request.url.path == "/tokenize":  # like llama.cpp: strings tokenized, ids kept
            content = body["content"]
            parts = content if isinstance(content, list) else [content]
            tokens: list[int] = []
            for part in parts:
                words = part.split() if isinstance(part, str) else [part]
                tokens += [VOCABULARY.get(w, 7) if isinstance(w, str) else w for w in words]
            return httpx.Response(200, json={"tokens": tokens})
        data = [
            {"index": i, "embedding": [float(len(text)), float(i)]}
            for i, text in reversed(list(enumerate(body["input"])))
        ]
        return httpx.Response(200, json={"data": data})

    async def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
        return await self.client.request(method, path, json=json)


async def test_batches_keep_order() -> None:
    upstream = Upstream()
    embedder = Embedder(upstream, batch_size=3, concurrency=2)
    texts = [f"text number {'x' * i}" for i in range(8)]
    vectors = await embedder.embed(texts)
    assert [v[0] for v in vectors] == [float(len(t)) for t in texts]
    assert [len(call["input"]) for call in upstream.calls] == [3, 3, 2]


async def test_a_failed_batch_is_not_retried() -> None:
    """A 5xx reaching the embedder has been failed over by the pool already: sent once."""
    upstream = Upstream(failures=10)
    embedder = Embedder(upstream)
    with pytest.raises(UpstreamFailed, match="503"):
        await embedder.embed(["a", "b"])
    assert len(upstream.calls) == 1


async def test_a_rejected_request_is_not_retried() -> None:
    upstream = Upstream(failures=10, status=400)
    embedder = Embedder(upstream)
    with pytest.raises(UpstreamFailed, match="rejected"):
        await embedder.embed(["a"])
    assert len(upstream.calls) == 1


@pytest.mark.parametrize(
    "error",
    [
        UpstreamUnavailable("no slot freed within 1 s", retry_after=2.0),
        RateLimited("all slots are busy and the buffer is full"),
    ],
)
async def test_pool_errors_pass_through_once_and_unchanged(error: Exception) -> None:
    """The pool's 503 (buffer timeout) and 429 (buffer full) reach the caller as they are, after
    one call: no retry stacked on the pool's own wait."""
    calls = 0

    class Saturated:
        async def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
            nonlocal calls
            calls += 1
            raise error

    for call in (Embedder(Saturated()).embed(["a"]), Embedder(Saturated()).token_counts(["b"])):
        with pytest.raises(type(error)) as raised:
            await call
        assert raised.value is error
    assert calls == 2


async def test_connection_errors_become_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse), base_url="http://x")

    class Down:
        async def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
            return await client.request(method, path, json=json)

    with pytest.raises(UpstreamUnavailable):
        await Embedder(Down()).embed(["a"])


async def test_token_counts() -> None:
    upstream = Upstream()
    embedder = Embedder(upstream, batch_size=2)
    texts = ["one two", "three", "", "four five six", "seven"]
    assert await embedder.token_counts(texts) == [2, 1, 0, 3, 1]
    assert len(upstream.calls) == 3  # two texts per call


async def test_token_counts_fall_back_when_a_text_yields_the_marker() -> None:
    upstream = Upstream()
    embedder = Embedder(upstream, batch_size=8)
    assert await embedder.token_counts(["one zero two", "three"]) == [3, 1]
    assert [isinstance(call["content"], list) for call in upstream.calls] == [True, False, False]


@pytest.mark.integration
async def test_batched_token_counts_match_the_real_server(
    embedding_server: RunningServer, session_http: httpx.AsyncClient
) -> None:
    """One /tokenize call per batch gives each text's own count, as one call per text would."""
    url = embedding_server.url

    class Direct:
        async def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
            return await session_http.request(method, url + path, json=json)

    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "",
        "Ünïcödé naïve café 東京 — résumé, ½ \u00d7 π ≈ 1.57",
        "Table | 12.5 mg/kg | p < 0.001 | HbA1c ≥ 6.5%",
        "word " * 200,
        "x",
        "  leading and trailing spaces  ",
    ]
    batched = await Embedder(Direct(), batch_size=3).token_counts(texts)
    single = []
    for text in texts:
        response = await session_http.post(url + "/tokenize", json={"content": text})
        single.append(len(response.json()["tokens"]))
    assert batched == single
    assert await Embedder(Direct()).token_counts(["[SEP] a"]) >= [2]  # literal: overestimated


async def test_concurrent_callers_share_batches() -> None:
    upstream = Upstream()
    embedder = Embedder(upstream, batch_size=8, concurrency=1)
    first, second = await asyncio.gather(embedder.embed(["a", "bb"]), embedder.embed(["ccc"]))
    assert [v[0] for v in first] == [1.0, 2.0] and [v[0] for v in second] == [3.0]
    assert [len(call["input"]) for call in upstream.calls] == [3]
    await embedder.close()


async def test_queued_texts_are_batched_across_tenants_in_turn() -> None:
    """A burst of one team's texts does not make another team's query wait behind all of it;
    each batch goes to the pool as the tenant of its first text."""
    upstream = Upstream()
    seen: list[tuple[list[str], str | None]] = []

    class Recording:
        async def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
            seen.append((list(json["input"]), current_tenant()))
            return await upstream.request(method, path, json=json)

    embedder = Embedder(Recording(), batch_size=2, concurrency=1)

    async def embed_for(tenant: str, texts: list[str]) -> list[list[float]]:
        set_tenant(tenant)  # as the HTTP layer does for the key of the request
        return await embedder.embed(texts)

    burst = asyncio.create_task(embed_for("team-a", [f"a{n}" for n in range(6)]))
    query = asyncio.create_task(embed_for("team-b", ["b0"]))
    await asyncio.gather(burst, query)
    assert seen == [
        (["a0", "b0"], "team-a"),  # FIFO: b0 would have gone in the last batch
        (["a1", "a2"], "team-a"),
        (["a3", "a4"], "team-a"),
        (["a5"], "team-a"),
    ]
    await embedder.close()
