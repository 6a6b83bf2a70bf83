"""Fixtures of the question-answering tests: a real generation llama-server, the service served
by uvicorn on a free port with documents ingested through the real pipeline, and helpers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ingest.pipeline import DocumentInfo, ingest_document
from rag.api.app import create_app
from rag.core.pool.settings import PoolSettings
from rag.core.runtime.children import generation_args
from rag.core.runtime.prepare import PreparedRuntime
from rag.core.runtime.supervisor import ChildSpec, free_port
from rag.core.settings import Settings
from rag.service.components import Components, ingest_options
from tests.conftest import RunningServer, serve_app, start_children, wait_for

COLLECTION = "qa"
DOCUMENTS = {
    "sea-otters.txt": (
        "Sea otters hold hands while they sleep so that they do not drift apart. A group of "
        "resting sea otters is called a raft. A sea otter keeps a favourite stone in a pouch of "
        "loose skin under its forearm and uses it to crack open shellfish."
    ),
    "llama-slots.md": (
        "# Slots\n\nllama-server splits its context evenly between its slots. Started with "
        "-c 4096 and -np 2, every slot has a context of 2048 tokens. The /slots endpoint lists "
        "the slots and whether each one is processing a request."
    ),
    "lighthouse.txt": (
        "The Brightwater lighthouse was built in 1871 on Gull Rock. Its lamp is visible for 22 "
        "nautical miles. The last keeper, Agnes Morrow, left the lighthouse in 1964, when the "
        "light was automated."
    ),
}
ANSWER_SETTINGS: dict[str, Any] = {
    "answer_max_tokens": 96,  # two cores: keep generations short
    "answer_max_chars": 160,
    "answer_top_k": 3,
    "answer_temperature": 0.0,
    "workers": 0,
    "auth": "open",  # no API keys (loopback only); tests/test_auth.py runs with keys
    "pool": PoolSettings(poll_interval=0.2, buffer_timeout=3.0),
}


@pytest.fixture(scope="session")
async def answer_generation_server(
    base_settings: Settings, runtime: PreparedRuntime, session_http: httpx.AsyncClient
) -> AsyncIterator[RunningServer]:
    """A real generation llama-server (SmolLM2-135M-Instruct) with the service's own flags."""
    args = generation_args(base_settings, runtime.generation_model)
    spec = ChildSpec("answer-generation", "generation", args, free_port())
    supervisor = await start_children(
        runtime.llama_server, [spec], logs_dir=base_settings.logs_dir, http=session_http
    )
    yield RunningServer(supervisor)
    await supervisor.stop()


@dataclass
class ServedApp:
    app: FastAPI
    url: str
    settings: Settings

    @property
    def components(self) -> Components:
        components: Components = self.app.state.components
        return components


def answer_settings(data_dir: Path, **overrides: Any) -> Settings:
    values = {**ANSWER_SETTINGS, "data_dir": data_dir, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


serve_asgi = serve_app  # one way to serve an app in the tests (tests/conftest.py)


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[ServedApp]:
    """The service built by ``create_app(settings)``, served on a free local port."""
    app = create_app(settings)
    async with serve_asgi(app) as url:
        yield ServedApp(app, url, settings)


async def ingest_texts(
    services: Components, collection: str, documents: dict[str, str]
) -> dict[str, str]:
    """Ingest ``{filename: text}`` through the real pipeline; returns ``{filename: doc id}``."""
    ids = {}
    options = ingest_options(services.settings)

    async def report(stage: str, done: int, total: int) -> None:
        return None

    for index, (filename, text) in enumerate(documents.items()):
        document = DocumentInfo(
            id=f"doc-{index}-{filename}",
            collection=collection,
            filename=filename,
            content_type="text/markdown" if filename.endswith(".md") else "text/plain",
        )
        await ingest_document(
            document,
            text.encode(),
            store=services.store,
            embedder=services.embedder,
            executor=None,
            options=options,
            report=report,
        )
        ids[filename] = document.id
    return ids


async def wait_pool_ready(
    services: Components, *, generation: bool = True, seconds: float = 30.0
) -> None:
    """Until the pools have a healthy upstream (their pollers run every 0.2 s here)."""
    pools = [services.embedding_pool]
    if generation:
        pools.append(services.generation_pool)

    def ready() -> bool:
        return all(
            any(u["state"] == "healthy" for u in pool.status()["upstreams"]) for pool in pools
        )

    if not await wait_for(ready, within=seconds):
        raise RuntimeError(f"pools not ready: {[pool.status() for pool in pools]}")


@dataclass
class QaApp:
    served: ServedApp
    documents: dict[str, str]  # filename -> document id
    generation_url: str


@pytest.fixture(scope="session")
async def qa_app(
    tmp_path_factory: pytest.TempPathFactory,
    embedding_server: RunningServer,
    answer_generation_server: RunningServer,
) -> AsyncIterator[QaApp]:
    """The service on the real llama-servers, with ``DOCUMENTS`` in collection ``qa``."""
    settings = answer_settings(
        tmp_path_factory.mktemp("qa"),
        embedding_urls=[embedding_server.url],
        generation_urls=[answer_generation_server.url],
    )
    async with serve(settings) as served:
        await wait_pool_ready(served.components)
        documents = await ingest_texts(served.components, COLLECTION, DOCUMENTS)
        yield QaApp(served, documents, answer_generation_server.url)


def parse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Server-Sent Events of a whole body as (event, data) pairs."""
    events = []
    for block in text.strip().split("\n\n"):
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        events.append((name, json.loads(data) if data else {}))
    return events
