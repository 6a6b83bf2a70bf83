"""POST /v1/answer end to end on the real parts: documents ingested through the real pipeline into
Qdrant (local mode), the real embedding and generation llama-servers, the app served by uvicorn.

The model is small: these tests assert the guarantees (schema-valid object, citations within the
given sources, events in order, limits), never its wording."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from rag.answer.schema import answer_schema, validate_answer
from tests.answer.conftest import (
    COLLECTION,
    DOCUMENTS,
    QaApp,
    ServedApp,
    answer_settings,
    ingest_texts,
    parse_events,
    serve,
    wait_pool_ready,
)
from tests.conftest import RunningServer, wait_for

pytestmark = pytest.mark.integration

LIGHTHOUSE_Q = "How many nautical miles away is the lamp of the Brightwater lighthouse visible?"
ABSENT_Q = "What is a good recipe for Hungarian goulash with paprika?"


def assert_schema_valid(final: dict[str, object], max_chars: int) -> None:
    """The model's part of the final object validates against the schema of its sources."""
    sources = final["sources"]
    assert isinstance(sources, list)
    numbers = [source["n"] for source in sources]
    assert numbers == list(range(1, len(numbers) + 1))
    schema = answer_schema(numbers, max_chars)
    body = {"answer": final["answer"], "citations": final["citations"]}
    import json

    parsed = validate_answer(json.dumps(body), schema)
    assert set(parsed.citations) <= set(numbers)


async def prompt_tokens_total(http: httpx.AsyncClient, url: str) -> float:
    text = (await http.get(f"{url}/metrics")).text
    match = re.search(r"^llamacpp:prompt_tokens_total\s+(\S+)$", text, re.MULTILINE)
    assert match, "the generation server exposes llamacpp:prompt_tokens_total"
    return float(match.group(1))


async def test_streamed_answer_cites_the_one_relevant_document(qa_app: QaApp) -> None:
    async with httpx.AsyncClient(base_url=qa_app.served.url, timeout=120) as http:
        response = await http.post(
            "/v1/answer",
            json={"question": LIGHTHOUSE_Q, "collection": COLLECTION, "top_k": 1, "stream": True},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "sources"
    assert names[-2:] == ["answer", "done"], names
    assert set(names[1:-2]) == {"delta"}, "only deltas between sources and answer"
    assert len(names) >= 4, "at least one delta"

    sources = events[0][1]["sources"]
    assert [s["document_id"] for s in sources] == [qa_app.documents["lighthouse.txt"]]
    assert "22 nautical miles" in sources[0]["text"]

    final = events[-2][1]
    assert_schema_valid(final, qa_app.served.settings.answer_max_chars)
    assert final["citations"] == [1], "one source given: the grammar allows only [1]"
    assert final["sources"][0]["document_id"] == qa_app.documents["lighthouse.txt"]
    assert "".join(data["text"] for name, data in events if name == "delta") == final["answer"]
    assert final["template"] == "answer-v1"
    assert final["dont_know"] is False
    assert final["usage"]["prompt_tokens"] > 0
    assert 0 < final["usage"]["completion_tokens"] <= qa_app.served.settings.answer_max_tokens
    assert final["citations_checked"] is True
    assert set(final["citation_scores"]) == {"1"}
    assert set(final["unsupported_citations"]) <= {1}


async def test_non_streaming_answer_is_one_valid_object(qa_app: QaApp) -> None:
    async with httpx.AsyncClient(base_url=qa_app.served.url, timeout=120) as http:
        response = await http.post(
            "/v1/answer", json={"question": "What do sea otters hold while they sleep?",
                                "collection": COLLECTION, "top_k": 2},
        )  # fmt: skip
    assert response.status_code == 200, response.text
    final = response.json()
    assert_schema_valid(final, qa_app.served.settings.answer_max_chars)
    assert 1 <= len(final["sources"]) <= 2
    assert final["sources"][0]["document_id"] == qa_app.documents["sea-otters.txt"]
    assert set(final["sources"][0]) == {"n", "document_id", "chunk_id", "filename", "page", "score"}
    assert final["template"] == "answer-v1"


async def test_absent_topic_gets_i_dont_know_without_calling_the_model(qa_app: QaApp) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        before = await prompt_tokens_total(http, qa_app.generation_url)
        response = await http.post(
            f"{qa_app.served.url}/v1/answer",
            json={"question": ABSENT_Q, "collection": COLLECTION, "stream": True},
        )
        after = await prompt_tokens_total(http, qa_app.generation_url)
    assert response.status_code == 200
    events = parse_events(response.text)
    assert [name for name, _ in events] == ["sources", "delta", "answer", "done"]
    assert events[0][1] == {"sources": []}
    final = events[2][1]
    assert final["dont_know"] is True
    assert final["reason"] == "no_relevant_sources"
    assert final["citations"] == []
    assert final["sources"] == []
    assert final["answer"].startswith("I don't know")
    assert final["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert final["template"] == "answer-v1"
    assert after == before, "the generation server processed no prompt"


@pytest.fixture(scope="module")
async def long_answers(
    tmp_path_factory: pytest.TempPathFactory,
    embedding_server: RunningServer,
    answer_generation_server: RunningServer,
) -> AsyncIterator[ServedApp]:
    """The service with room for long answers (480 tokens, no repetition penalty: the small
    model runs on until a limit stops it), on the session's servers, with ``DOCUMENTS``."""
    settings = answer_settings(
        tmp_path_factory.mktemp("long-answers"),
        embedding_urls=[embedding_server.url],
        generation_urls=[answer_generation_server.url],
        answer_max_tokens=480,
        answer_max_chars=3000,
        answer_repeat_penalty=1.0,
    )
    async with serve(settings) as served:
        await wait_pool_ready(served.components)
        await ingest_texts(served.components, COLLECTION, DOCUMENTS)
        yield served


async def test_client_disconnect_stops_generation_and_frees_the_slot(
    long_answers: ServedApp,
) -> None:
    body = {
        # the model writes on until the token limit cuts it off (an ``error`` event at the end)
        "question": "Write a very long, detailed essay about lighthouses, sea otters and "
        "llama-server slots.",
        "collection": COLLECTION,
        "top_k": 3,
        "stream": True,
    }
    (generation_url,) = long_answers.settings.generation_urls
    pool = long_answers.components.generation_pool

    async def free() -> bool:
        slots = (await http.get(f"{generation_url}/slots")).json()
        upstream = pool.status()["upstreams"][0]
        return not any(s["is_processing"] for s in slots) and upstream["requests_in_flight"] == 0

    async with httpx.AsyncClient(base_url=long_answers.url, timeout=120) as http:
        # how long the same answer takes undisturbed (temperature 0: the same tokens each time)
        started = time.monotonic()
        undisturbed = await http.post("/v1/answer", json=body)
        assert undisturbed.status_code == 200
        takes = time.monotonic() - started
        assert takes > 3.0, f"the answer is too short to tell: {takes:.1f} s"
        assert await wait_for(free)  # once its response has ended

        started = time.monotonic()
        async with http.stream("POST", "/v1/answer", json=body) as response:
            assert response.status_code == 200
            seen = []
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    seen.append(line[6:].strip())
                if "delta" in seen:
                    break  # leave: the connection is closed mid-answer
        left = time.monotonic()
        assert "answer" not in seen
        would_end = takes - (left - started)  # seconds after the client left
        freed = await wait_for(free, within=would_end / 3)
        assert freed, f"the slot still busy {time.monotonic() - left:.1f} s after the client left"
