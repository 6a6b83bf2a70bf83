"""Fixtures of the pool tests: small real llama-servers (SmolLM2, ``-np 2``) and a balancer
served by uvicorn in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.core.pool.client import PoolClient, pool_client
from rag.core.runtime.build import ensure_llama_server
from rag.core.runtime.models import ensure_generation_model
from rag.core.runtime.supervisor import ChildSpec, Supervisor, free_port
from rag.core.settings import Settings
from tests.conftest import serve_app, start_children

SLOTS = 2
SLOT_CTX = 2048  # tokens of context per slot: room for holds that last many seconds


@dataclass(frozen=True)
class Binaries:
    llama_server: Path
    generation_model: Path


@pytest.fixture(scope="session")
def binaries(base_settings: Settings) -> Binaries:
    """The real llama-server and SmolLM2 (built/prepared once into the user cache)."""
    return Binaries(ensure_llama_server(base_settings), ensure_generation_model(base_settings))


def server_args(model: Path) -> tuple[str, ...]:
    ctx = str(SLOT_CTX * SLOTS)
    return ("-m", str(model), "-c", ctx, "-np", str(SLOTS), "-t", "1", "--no-webui")


async def start_servers(
    settings: Settings, binaries: Binaries, names: list[str], http: httpx.AsyncClient
) -> Supervisor:
    specs = [
        ChildSpec(name, "generation", server_args(binaries.generation_model), free_port())
        for name in names
    ]
    return await start_children(
        binaries.llama_server, specs, logs_dir=settings.logs_dir, http=http, backoff_max=2.0
    )


@pytest.fixture(scope="session")
async def pool_http() -> AsyncIterator[PoolClient]:
    """The client the service and the balancer hand their pools (rag/core/pool/transport.py)."""
    async with pool_client(connect=2.0, read=120.0) as http:
        yield http


@pytest.fixture(scope="session")
async def upstreams(
    base_settings: Settings, binaries: Binaries, pool_http: PoolClient
) -> AsyncIterator[list[str]]:
    """Two real generation llama-servers with two slots each, for the whole session."""
    supervisor = await start_servers(base_settings, binaries, ["pool-a", "pool-b"], pool_http)
    yield [child.spec.url for child in supervisor.children]
    await supervisor.stop()


async def busy_slots(http: httpx.AsyncClient, url: str) -> int:
    slots = (await http.get(f"{url}/slots")).json()
    return sum(1 for slot in slots if slot["is_processing"])


async def answers_health(http: httpx.AsyncClient, url: str) -> bool:
    """Whether ``url`` (a balancer) answers ``/health`` with 200: an upstream is ready."""
    return (await http.get(f"{url}/health")).status_code == 200


serving = serve_app  # one way to serve an app in the tests (tests/conftest.py)


# Nearly the whole slot (the prompt is about a dozen tokens), without stopping at an end of
# text: at most a few ms a token, that is many seconds on any CPU.
HOLD = {
    "prompt": "Count from one to one thousand: one, two,",
    "n_predict": SLOT_CTX - 64,
    "ignore_eos": True,
}


@pytest.fixture
def hold_body() -> dict[str, Any]:
    """A streaming /completion that keeps a slot busy until the client goes."""
    return {**HOLD, "stream": True}


@dataclass(frozen=True)
class Generation:
    """What llama-server's ``/slots`` says of a slot's running generation."""

    decoded: int  # tokens generated so far
    remaining: int  # tokens still to generate (n_remain)


async def busy_generations(http: httpx.AsyncClient, url: str) -> list[Generation]:
    slots = (await http.get(f"{url}/slots")).json()
    return [
        Generation(slot["next_token"][0]["n_decoded"], slot["next_token"][0]["n_remain"])
        for slot in slots
        if slot["is_processing"]
    ]
