"""Every documented failure of POST /v1/answer: its status, its error shape, and for failures after
the stream started, the ``error`` event.

Malformed upstream output comes from a fake llama-server (``fake_llama.py``): a real one under the
grammar does not produce it, and the thing under test is the service's handling of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.core.runtime.supervisor import free_port
from tests.answer.conftest import (
    COLLECTION,
    DOCUMENTS,
    QaApp,
    ServedApp,
    answer_settings,
    ingest_texts,
    parse_events,
    serve,
    serve_asgi,
    wait_pool_ready,
)
from tests.answer.fake_llama import fake_llama_server
from tests.conftest import RunningServer

pytestmark = pytest.mark.integration

QUESTION = "How far is the lamp of the Brightwater lighthouse visible?"


def assert_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == kind
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return dict(error)


async def post(url: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(f"{url}/v1/answer", json=body)


# --- bad requests (the real service) ----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_no_such_collection_is_404(qa_app: QaApp, stream: bool) -> None:
    body = {"question": QUESTION, "collection": "nowhere", "stream": stream}
    assert_error(await post(qa_app.served.url, body), 404, "not_found")


@pytest.mark.parametrize("question", ["", "   \n\t"])
async def test_empty_question_is_422(qa_app: QaApp, question: str) -> None:
    response = await post(qa_app.served.url, {"question": question, "collection": COLLECTION})
    error = assert_error(response, 422, "validation_error")
    assert error["reason"] == "empty_question"


async def test_missing_question_is_422(qa_app: QaApp) -> None:
    assert_error(await post(qa_app.served.url, {"collection": COLLECTION}), 422, "validation_error")


async def test_question_too_long_is_400_with_reason(qa_app: QaApp) -> None:
    limit = qa_app.served.settings.question_max_chars
    body = {"question": "why " * limit, "collection": COLLECTION, "stream": True}
    error = assert_error(await post(qa_app.served.url, body), 400, "invalid_request")
    assert error["reason"] == "question_too_long"
    assert str(limit) in error["message"]


async def test_a_question_past_the_embedding_models_limit_is_question_too_long(
    qa_app: QaApp,
) -> None:
    """Within the character limit but over the embedding model's 256 tokens: the answer route
    names it as a question (the search route's reason is ``query_too_long``)."""
    numbers = " ".join(str(n) for n in range(300))  # a WordPiece token per number at least
    limit = qa_app.served.settings.question_max_chars
    body = {"question": numbers[:limit], "collection": COLLECTION}  # ~270 numbers
    error = assert_error(await post(qa_app.served.url, body), 400, "invalid_request")
    assert error["reason"] == "question_too_long"
    assert error["message"].startswith("the question is")


async def test_invalid_collection_name_is_400(qa_app: QaApp) -> None:
    body = {"question": QUESTION, "collection": "../etc"}
    assert_error(await post(qa_app.served.url, body), 400, "invalid_request")


# --- unreachable parts ----------------------------------------------------------------------


@pytest.fixture(scope="module")
async def no_generation_app(
    tmp_path_factory: pytest.TempPathFactory, embedding_server: RunningServer
) -> AsyncIterator[ServedApp]:
    """The service whose only generation upstream does not listen."""
    settings = answer_settings(
        tmp_path_factory.mktemp("no-generation"),
        embedding_urls=[embedding_server.url],
        generation_urls=[f"http://127.0.0.1:{free_port()}"],
    )
    async with serve(settings) as served:
        await wait_pool_ready(served.components, generation=False)
        await ingest_texts(served.components, COLLECTION, DOCUMENTS)
        yield served


@pytest.mark.parametrize("stream", [False, True])
async def test_generation_pool_down_is_503_with_retry_after(
    no_generation_app: ServedApp, stream: bool
) -> None:
    body = {"question": QUESTION, "collection": COLLECTION, "stream": stream}
    response = await post(no_generation_app.url, body)
    assert_error(response, 503, "upstream_unavailable")
    assert int(response.headers["retry-after"]) >= 1


# qdrant-client checks the server version in a thread when the client is made (VectorStore.open);
# against a server that is down that thread fails, which pytest reports as a warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_qdrant_down_is_503_with_retry_after(
    tmp_path: Path, embedding_server: RunningServer
) -> None:
    settings = answer_settings(
        tmp_path,
        embedding_urls=[embedding_server.url],
        generation_urls=[f"http://127.0.0.1:{free_port()}"],
        qdrant_url=f"http://127.0.0.1:{free_port()}",
        qdrant_timeout=2.0,
    )
    async with serve(settings) as served:
        await wait_pool_ready(served.components, generation=False)
        for stream in (False, True):
            body = {"question": QUESTION, "collection": COLLECTION, "stream": stream}
            response = await post(served.url, body)
            assert_error(response, 503, "store_unavailable")
            assert int(response.headers["retry-after"]) >= 1


# --- bad upstream output (a fake generation server) -------------------------------------------


class FakeApp:
    def __init__(self, served: ServedApp, upstream: Any) -> None:
        self.served = served
        self.upstream = upstream


@pytest.fixture(scope="module")
async def fake_app(
    tmp_path_factory: pytest.TempPathFactory, embedding_server: RunningServer
) -> AsyncIterator[FakeApp]:
    upstream = fake_llama_server()
    async with serve_asgi(upstream) as fake_url:
        settings = answer_settings(
            tmp_path_factory.mktemp("fake-generation"),
            embedding_urls=[embedding_server.url],
            generation_urls=[fake_url],
        )
        async with serve(settings) as served:
            await wait_pool_ready(served.components)
            await ingest_texts(served.components, COLLECTION, DOCUMENTS)
            yield FakeApp(served, upstream)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("malformed", "invalid_output"), ("outside_schema", "invalid_output"),
     ("cut_off", "length"), ("broken", None)],
)  # fmt: skip
async def test_bad_upstream_output_ends_the_stream_with_an_error_event(
    fake_app: FakeApp, mode: str, reason: str | None
) -> None:
    fake_app.upstream.state.mode = mode
    body = {"question": QUESTION, "collection": COLLECTION, "top_k": 1, "stream": True}
    response = await post(fake_app.served.url, body)
    assert response.status_code == 200
    events = parse_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "sources"
    assert names[-1] == "error", names
    assert "answer" not in names
    assert "done" not in names
    error = events[-1][1]
    assert error["type"] == "upstream_error"
    assert error["status"] == 502
    assert error["request_id"] == response.headers["x-request-id"]
    if reason is not None:
        assert error["reason"] == reason
    pool = fake_app.served.components.generation_pool.status()
    assert pool["upstreams"][0]["requests_in_flight"] == 0, "the slot was given back"


@pytest.mark.parametrize("mode", ["malformed", "outside_schema", "cut_off"])
async def test_bad_upstream_output_without_streaming_is_502(fake_app: FakeApp, mode: str) -> None:
    fake_app.upstream.state.mode = mode
    body = {"question": QUESTION, "collection": COLLECTION, "top_k": 1}
    assert_error(await post(fake_app.served.url, body), 502, "upstream_error")


async def test_the_fake_upstream_gives_answers_when_it_behaves(fake_app: FakeApp) -> None:
    fake_app.upstream.state.mode = "valid"
    body = {"question": QUESTION, "collection": COLLECTION, "top_k": 1, "stream": True}
    events = parse_events((await post(fake_app.served.url, body)).text)
    assert [name for name, _ in events][-2:] == ["answer", "done"]
    assert events[-2][1]["answer"] == "Twenty-two nautical miles."
