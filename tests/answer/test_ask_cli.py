"""``rag ask`` against the served app: the answer streams, the cited sources follow."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from rag.cli.main import app
from tests.answer.conftest import COLLECTION, QaApp

pytestmark = pytest.mark.integration


async def run(*args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(CliRunner().invoke, app, ["ask", *args])
    return result.exit_code, result.output


async def test_ask_streams_the_answer_and_lists_the_cited_source(qa_app: QaApp) -> None:
    code, output = await run(
        "How many nautical miles away is the Brightwater lamp visible?",
        "--collection", COLLECTION, "--top-k", "1", "--url", qa_app.served.url,
    )  # fmt: skip
    assert code == 0, output
    assert "Sources:\n  [1] lighthouse.txt" in output


async def test_ask_json_prints_the_final_object(qa_app: QaApp) -> None:
    code, output = await run(
        "What is a good recipe for Hungarian goulash?",
        "--collection", COLLECTION, "--url", qa_app.served.url, "--json",
    )  # fmt: skip
    assert code == 0, output
    final = json.loads(output)
    assert final["dont_know"] is True
    assert final["template"] == "answer-v1"


async def test_ask_reports_request_errors(qa_app: QaApp) -> None:
    code, output = await run("Why?", "--collection", "nowhere", "--url", qa_app.served.url)
    assert code == 2
    assert "not_found" in output
