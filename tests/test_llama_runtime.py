"""The real llama.cpp runtime: a built llama-server serving the two prepared models."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import httpx
import numpy as np
import pytest

from rag.core.runtime.children import generation_args
from rag.core.runtime.prepare import PreparedRuntime
from rag.core.runtime.supervisor import ChildSpec, ChildState, Supervisor, free_port
from rag.core.settings import Settings
from tests.conftest import RunningServer, wait_for

pytestmark = pytest.mark.integration


async def test_embeddings_reproduce_the_reference(
    embedding_server: RunningServer,
    session_http: httpx.AsyncClient,
    minilm_reference_data: dict[str, Any],
) -> None:
    reference = minilm_reference_data
    response = await session_http.post(
        f"{embedding_server.url}/v1/embeddings", json={"input": reference["texts"]}
    )
    response.raise_for_status()
    rows = sorted(response.json()["data"], key=lambda row: row["index"])
    got = np.asarray([row["embedding"] for row in rows])
    want = np.asarray(reference["embeddings"])
    assert got.shape == (4, 384)
    cosines = np.sum(got * want, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    )
    assert cosines.min() >= 0.9999, cosines


ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}


async def test_grammar_constrained_completion_parses_as_the_schema(
    generation_server: RunningServer, session_http: httpx.AsyncClient
) -> None:
    response = await session_http.post(
        f"{generation_server.url}/completion",
        json={
            "prompt": "Describe the capital of France as JSON.\n",
            "json_schema": ANSWER_SCHEMA,
            "n_predict": 96,
            "temperature": 0.0,
        },
    )
    response.raise_for_status()
    body = response.json()
    assert body["stop_type"] != "limit", "the token limit cut the object off"
    value = json.loads(body["content"])
    assert set(value) == {"city", "country", "population_millions"}
    assert isinstance(value["city"], str) and len(value["city"]) <= 40
    assert isinstance(value["population_millions"], int)
    assert 0 <= value["population_millions"] <= 100


async def test_supervisor_restarts_a_killed_child(
    base_settings: Settings, runtime: PreparedRuntime, session_http: httpx.AsyncClient
) -> None:
    spec = ChildSpec(
        "restart-test",
        "generation",
        generation_args(base_settings, runtime.generation_model),
        free_port(),
    )
    supervisor = Supervisor(
        runtime.llama_server, [spec], logs_dir=base_settings.logs_dir, http=session_http
    )
    await supervisor.start()
    try:
        assert await supervisor.wait_healthy(60)
        child = supervisor.children[0]
        first_pid = child.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)

        def restarted() -> bool:
            return child.state is ChildState.HEALTHY and child.pid not in (None, first_pid)

        assert await wait_for(restarted, within=60)
        assert child.state is ChildState.HEALTHY
        assert child.pid != first_pid
        assert child.restarts == 1
        assert child.last_exit == -signal.SIGKILL
        health = await session_http.get(f"{spec.url}/health")
        assert health.status_code == 200
    finally:
        await supervisor.stop()
    assert child.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)
