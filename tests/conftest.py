"""Shared fixtures: the real llama.cpp runtime (built and prepared once into the user cache) and
real llama-server children, started once per test session and stopped at its end."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from rag.core.runtime.children import embedding_args, generation_args
from rag.core.runtime.prepare import PreparedRuntime, prepare_runtime
from rag.core.runtime.supervisor import ChildSpec, Supervisor, free_port
from rag.core.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Fixtures that build llama-server and prepare the models (or reuse them from the runtime cache):
# every fixture that starts a real llama-server depends on one of them.
RUNTIME_FIXTURES = frozenset({"runtime", "binaries"})


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects: it must see the marks added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``llama`` every test that needs the runtime, through any chain of fixtures (for
    example ``qa_app`` -> ``embedding_server`` -> ``runtime``), so that ``-m "not llama"`` is
    the fast subset that never builds llama-server nor prepares a model."""
    for item in items:
        if RUNTIME_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.llama)


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings on a temporary data folder, sharing the user's runtime cache."""
    data_dir = tmp_path_factory.mktemp("rag-data")
    # no API keys (loopback only); tests/test_auth.py runs the service with keys
    return Settings(data_dir=data_dir, auth="open", _env_file=None)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def runtime(base_settings: Settings) -> PreparedRuntime:
    """The real llama-server and both real models (built/prepared once, then cached)."""
    return prepare_runtime(base_settings)


class RunningServer:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.url = supervisor.children[0].spec.url
        self.urls = [child.spec.url for child in supervisor.children]


async def start_children(
    binary: Path,
    specs: list[ChildSpec],
    *,
    logs_dir: Path,
    http: httpx.AsyncClient,
    **options: Any,
) -> Supervisor:
    """Real llama-server children under a supervisor, healthy, or the test fails."""
    supervisor = Supervisor(binary, specs, logs_dir=logs_dir, http=http, **options)
    await supervisor.start()
    if not await supervisor.wait_healthy(120):
        await supervisor.stop()
        pytest.fail(f"llama-server children did not become healthy; logs in {logs_dir}")
    return supervisor


@pytest.fixture(scope="session")
async def session_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0)) as http:
        yield http


@pytest.fixture(scope="session")
async def embedding_server(
    base_settings: Settings, runtime: PreparedRuntime, session_http: httpx.AsyncClient
) -> AsyncIterator[RunningServer]:
    """One real embedding llama-server (all-MiniLM-L6-v2) for the whole session."""
    spec = ChildSpec(
        "test-embedding",
        "embedding",
        embedding_args(base_settings, runtime.embedding_model),
        free_port(),
    )
    supervisor = await start_children(
        runtime.llama_server, [spec], logs_dir=base_settings.logs_dir, http=session_http
    )
    yield RunningServer(supervisor)
    await supervisor.stop()


@pytest.fixture(scope="session")
async def generation_server(
    base_settings: Settings, runtime: PreparedRuntime, session_http: httpx.AsyncClient
) -> AsyncIterator[RunningServer]:
    """One real generation llama-server (SmolLM2-135M-Instruct) for the whole session."""
    spec = ChildSpec(
        "test-generation",
        "generation",
        generation_args(base_settings, runtime.generation_model),
        free_port(),
    )
    supervisor = await start_children(
        runtime.llama_server, [spec], logs_dir=base_settings.logs_dir, http=session_http
    )
    yield RunningServer(supervisor)
    await supervisor.stop()


@pytest.fixture(scope="session")
def minilm_reference() -> Path:
    return (
        Path(__file__).resolve().parents[1] / "rag" / "core" / "runtime" / "minilm_reference.json"
    )


@pytest.fixture(scope="session")
def minilm_reference_data(minilm_reference: Path) -> dict[str, Any]:
    """Texts and their all-MiniLM-L6-v2 embeddings computed with sentence-transformers."""
    data: dict[str, Any] = json.loads(minilm_reference.read_text())
    return data


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL the tests may use: RAG_TEST_POSTGRES_URL, else 127.0.0.1:5432/test."""
    return os.environ.get(
        "RAG_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    )


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port, lifespan included; yield its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 60
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            server.should_exit = True
            await task
            pytest.fail("the app did not start")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def service_settings(
    base: Settings,
    data_dir: Path,
    embedding: RunningServer,
    generation: RunningServer | None = None,
    **overrides: Any,
) -> Settings:
    """Settings of a service in ``data_dir`` that uses the session's real llama-servers."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "embedding_urls": embedding.urls,
        "generation_urls": generation.urls if generation else [],
        "pool": base.pool.model_copy(update={"poll_interval": 0.2}),
        "job_lease_seconds": 5.0,
    }
    values.update(overrides)
    return base.model_copy(update=values)


async def wait_for(predicate: Callable[[], Any], within: float = 10.0, step: float = 0.05) -> Any:
    """Call ``predicate()`` (sync or async) until its value is true or ``within`` seconds passed;
    return that value, or ``None`` when time ran out. The one way the tests wait for something
    to happen (``assert await wait_for(...)``), instead of sleeping "long enough"."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            return None
        await asyncio.sleep(step)


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, waiting for its reaper, runs no more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: list[int], within: float) -> list[int]:
    """Wait until none of ``pids`` runs, at most ``within`` seconds; return those still running.
    (Blocking: for processes the test itself kills, where nothing else runs meanwhile.)"""
    deadline = time.monotonic() + within
    alive = [pid for pid in pids if running(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if running(pid)]
    return alive


async def wait_job(http: httpx.AsyncClient, base: str, job_id: str, within: float = 120) -> Any:
    """Poll ``GET /v1/jobs/{id}`` until the job succeeds or fails; return its last state."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        job = (await http.get(f"{base}/v1/jobs/{job_id}")).json()
        if job["state"] in ("succeeded", "failed"):
            return job
        await asyncio.sleep(0.1)
    pytest.fail(f"job {job_id} did not finish within {within} s: {job}")
