"""Usage per key: the tokens recorded for answers equal the sum of what the answers report
(llama-server's own counts), streamed or not. The real service on the real llama-servers
(open mode: every request is the key ``open``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.answer.conftest import COLLECTION, QaApp

QUESTION = "How far is the lamp of the Brightwater lighthouse visible?"

pytestmark = pytest.mark.integration


def totals(rows: list[dict[str, Any]]) -> tuple[int, int, int]:
    mine = [r for r in rows if r["key_id"] == "open" and r["collection"] == COLLECTION]
    return (
        sum(r["requests"] for r in mine),
        sum(r["prompt_tokens"] for r in mine),
        sum(r["completion_tokens"] for r in mine),
    )


async def test_usage_totals_equal_the_answers_usage(qa_app: QaApp) -> None:
    url = qa_app.served.url
    async with httpx.AsyncClient(timeout=120) as http:
        before = totals((await http.get(f"{url}/v1/usage")).json()["usage"])
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
        after = totals((await http.get(f"{url}/v1/usage")).json()["usage"])
    assert streamed, "the stream ended with an answer"
    assert after[0] - before[0] == 2
    assert after[1] - before[1] == plain["prompt_tokens"] + streamed["prompt_tokens"]
    assert after[2] - before[2] == plain["completion_tokens"] + streamed["completion_tokens"]
    assert plain["prompt_tokens"] > 0 and plain["completion_tokens"] > 0
