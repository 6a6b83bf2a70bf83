"""Usage per key: the tokens recorded for answers equal the sum of what the answers report
(llama-server's own counts), streamed or not, and their embedding tokens (the query, the
citation checks) the sum of what the embedding server reported for them; the counters by key
name on /metrics add the same. The real service on the real llama-servers (open mode: every
request is the key ``open``)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from rag.core.embeddings import JsonUpstream
from tests.answer.conftest import COLLECTION, QaApp

QUESTION = "How far is the lamp of the Brightwater lighthouse visible?"

pytestmark = pytest.mark.integration


def totals(rows: list[dict[str, Any]]) -> tuple[int, int, int, int]:
    mine = [r for r in rows if r["key_id"] == "open" and r["collection"] == COLLECTION]
    return (
        sum(r["requests"] for r in mine),
        sum(r["prompt_tokens"] for r in mine),
        sum(r["completion_tokens"] for r in mine),
        sum(r["embedding_tokens"] for r in mine),
    )


class Reported:
    """Passes the query embedder's calls to its pool and keeps the usage each answer reported."""

    def __init__(self, upstream: JsonUpstream) -> None:
        self.upstream = upstream
        self.embedding_tokens = 0

    async def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
        response = await self.upstream.request(method, path, json=json)
        if path == "/v1/embeddings" and response.status_code == 200:
            self.embedding_tokens += int(response.json()["usage"]["prompt_tokens"])
        return response


def counters(text: str) -> dict[str, float]:
    found = re.finditer(r'^rag_tokens_total\{key="open",kind="(\w+)"\} (\S+)$', text, re.M)
    return {m[1]: float(m[2]) for m in found}


async def test_usage_totals_equal_the_answers_usage(qa_app: QaApp) -> None:
    url = qa_app.served.url
    embedder = qa_app.served.components.query_embedder
    reported = Reported(embedder.upstream)
    embedder.upstream = reported
    async with httpx.AsyncClient(timeout=120) as http:
        before = totals((await http.get(f"{url}/v1/usage")).json()["usage"])
        counted = counters((await http.get(f"{url}/metrics")).text)
        body = {"question": QUESTION, "collection": COLLECTION}
        plain = (await http.post(f"{url}/v1/answer", json=body)).json()["usage"]
        streamed: dict[str, int] = {}
        async with http.stream(
            "POST", f"{url}/v1/answer", json={**body, "stream": True}
        ) as response:
            event = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "answer":
                    streamed = json.loads(line.removeprefix("data: "))["usage"]
        embedder.upstream = reported.upstream
        after = totals((await http.get(f"{url}/v1/usage")).json()["usage"])
        now = counters((await http.get(f"{url}/metrics")).text)
    assert streamed, "the stream ended with an answer"
    assert after[0] - before[0] == 2
    assert after[1] - before[1] == plain["prompt_tokens"] + streamed["prompt_tokens"]
    assert after[2] - before[2] == plain["completion_tokens"] + streamed["completion_tokens"]
    assert plain["prompt_tokens"] > 0 and plain["completion_tokens"] > 0
    assert after[3] - before[3] == reported.embedding_tokens > 0
    assert now["prompt"] - counted.get("prompt", 0) == after[1] - before[1]
    assert now["completion"] - counted.get("completion", 0) == after[2] - before[2]
    assert now["embedding"] - counted.get("embedding", 0) == reported.embedding_tokens
