"""The query lane: search and answer embeddings never wait behind ingestion batches.

Which children the embedded runtime starts for it, and, against real llama-servers through the
components the service builds, that a search completes while ingestion texts are still queued
(with servers of its own, and sharing the ingestion servers), whereas with the lane switched off
it waits until every text queued before it has been sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.core.runtime.children import QUERY_EMBEDDING_ROLE, child_specs, embedding_args
from rag.core.runtime.prepare import PreparedRuntime
from rag.core.runtime.supervisor import ChildSpec, free_port
from rag.core.search import Searcher
from rag.core.settings import Settings
from rag.service.components import Components, open_components
from rag.service.metrics import Metrics
from tests.conftest import (
    SHARED_DATA,
    RunningServer,
    service_settings,
    start_children,
    wait_for,
)

MODELS = (Path("embedding.gguf"), Path("generation.gguf"))


def roles(settings: Settings) -> list[str]:
    return [spec.role for spec in child_specs(settings, *MODELS)]


def test_the_embedded_runtime_starts_a_query_embedding_child() -> None:
    settings = Settings(_env_file=None, embedding_query_slots=3)  # type: ignore[call-arg]
    specs = [s for s in child_specs(settings, *MODELS) if s.role == QUERY_EMBEDDING_ROLE]
    assert [s.name for s in specs] == ["embedding-query-0"]
    assert specs[0].args[specs[0].args.index("-np") + 1] == "3"
    assert roles(settings).count("embedding") == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"embedding_query_lane": False},
        {"embedding_query_servers": 0},
        {"embedding_query_urls": ["http://query:8080"]},
        {"embedding_urls": ["http://bulk:8080"]},  # external embedding servers: no local child
    ],
)
def test_no_query_child_where_the_settings_say_so(overrides: dict[str, Any]) -> None:
    settings = Settings(_env_file=None, **overrides)  # type: ignore[call-arg]
    assert QUERY_EMBEDDING_ROLE not in roles(settings)


# --- against real llama-servers ---------------------------------------------------------------


def abstracts(count: int) -> list[str]:
    texts = []
    with (SHARED_DATA / "scifact" / "corpus.jsonl").open() as lines:
        for line in lines:
            doc = json.loads(line)
            texts.append(f"{doc['title']} {doc['text']}"[:700])
            if len(texts) == count:
                return texts
    return texts


@pytest.fixture(scope="module")
async def query_server(
    base_settings: Settings, runtime: PreparedRuntime, session_http: httpx.AsyncClient
) -> AsyncIterator[RunningServer]:
    """A second real embedding llama-server, as a deployment reserves for queries."""
    spec = ChildSpec(
        "test-embedding-query",
        QUERY_EMBEDDING_ROLE,
        embedding_args(base_settings, runtime.embedding_model, slots=1),
        free_port(),
    )
    supervisor = await start_children(
        runtime.llama_server, [spec], logs_dir=base_settings.logs_dir, http=session_http
    )
    yield RunningServer(supervisor)
    await supervisor.stop()


async def wait_until_healthy(components: Components) -> None:
    pools = [p for p in (components.embedding_pool, components.query_embedding_pool) if p]

    def healthy() -> bool:
        return all(any(u["state"] == "healthy" for u in p.status()["upstreams"]) for p in pools)

    assert await wait_for(healthy, within=30), [p.status() for p in pools]


async def search_during_bulk(components: Components) -> tuple[int, bool]:
    """Start a bulk embedding of 60 texts (15 batches of 4, one in flight), search once while
    they are queued; return the texts still queued for ingestion and whether the bulk had
    finished when the search returned."""
    await components.store.ensure_collection("lane")
    bulk = asyncio.ensure_future(components.embedder.embed(abstracts(60)))
    assert await wait_for(lambda: components.embedder.queued > 0 or bulk.done(), step=0.005)
    searcher: Searcher = components.searcher
    await searcher.search("vitamin D and bone density", collection="lane", top_k=3)
    queued, finished = components.embedder.queued, bulk.done()
    assert len(await bulk) == 60
    return queued, finished


def lane_settings(
    base: Settings, tmp_path: Path, embedding: RunningServer, **overrides: Any
) -> Settings:
    return service_settings(
        base, tmp_path / "data", embedding,
        embedding_batch_size=4, embedding_concurrency=1, **overrides,
    )  # fmt: skip


@pytest.mark.integration
async def test_a_search_does_not_wait_for_queued_ingestion_on_its_own_servers(
    base_settings: Settings,
    tmp_path: Path,
    embedding_server: RunningServer,
    query_server: RunningServer,
) -> None:
    settings = lane_settings(
        base_settings, tmp_path, embedding_server, embedding_query_urls=query_server.urls
    )
    async with open_components(settings, Metrics()) as components:
        assert components.query_embedder is not components.embedder
        assert components.query_embedding_pool is not None
        assert components.query_embedding_pool.urls == query_server.urls
        assert components.query_embedder.upstream is components.query_embedding_pool
        await wait_until_healthy(components)
        queued, finished = await search_during_bulk(components)
    assert queued > 0 and not finished


@pytest.mark.integration
async def test_a_search_goes_ahead_of_queued_ingestion_on_shared_servers(
    base_settings: Settings, tmp_path: Path, embedding_server: RunningServer
) -> None:
    settings = lane_settings(base_settings, tmp_path, embedding_server)
    async with open_components(settings, Metrics()) as components:
        assert components.query_embedding_pool is None
        assert components.query_embedder is not components.embedder
        assert components.query_embedder.upstream is components.embedding_pool
        await wait_until_healthy(components)
        queued, finished = await search_during_bulk(components)
    assert queued > 0 and not finished


@pytest.mark.integration
async def test_without_the_lane_a_search_waits_behind_queued_ingestion(
    base_settings: Settings, tmp_path: Path, embedding_server: RunningServer
) -> None:
    """The old single queue, kept as a switch: the search is sent only after every text queued
    before it, which is what the lane removes."""
    settings = lane_settings(base_settings, tmp_path, embedding_server, embedding_query_lane=False)
    async with open_components(settings, Metrics()) as components:
        assert components.query_embedder is components.embedder
        await wait_until_healthy(components)
        queued, _ = await search_during_bulk(components)
    assert queued == 0
