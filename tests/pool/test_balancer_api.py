"""The whole llama-server HTTP API through ``rag balancer``: every route and method the
upstream answers goes through with the upstream's own status, CORS headers and body (Anthropic
Messages, Responses, token counting, slots, LoRA adapters, preflights, unknown paths and model
names with slashes); ``/metrics`` has the pool's families and the upstreams', by upstream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import pytest

from rag.balancer import balancer_settings, create_balancer_app
from rag.core.pool.client import PoolClient
from rag.core.runtime.supervisor import ChildSpec, free_port
from rag.core.settings import Settings
from tests.conftest import start_children, wait_for
from tests.pool.conftest import Binaries, answers_health, server_args, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
# (method, path, json body or None): what the upstream answers, the balancer must answer alike
CALLS: list[tuple[str, str, Any]] = [
    ("POST", "/v1/messages", CHAT),
    ("POST", "/v1/messages/count_tokens", {"messages": CHAT["messages"]}),
    ("POST", "/v1/responses", {"input": "Hi", "max_output_tokens": 2}),
    ("POST", "/v1/chat/completions/input_tokens", {"messages": CHAT["messages"]}),
    ("POST", "/apply-template", {"messages": CHAT["messages"]}),
    ("GET", "/slots", None),
    ("GET", "/lora-adapters", None),
    ("GET", "/v1/health", None),
    ("POST", "/props", {}),
    ("POST", "/rerank", {"query": "a", "documents": ["b"]}),  # not a reranker: its 4xx/5xx
    ("GET", "/v1/models/org/name-with/slashes", None),  # not served: llama-server's 404
    ("DELETE", "/slots/0", None),
    ("OPTIONS", "/v1/chat/completions", None),
    ("OPTIONS", "/health", None),
]
ORIGIN = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}


@pytest.fixture(scope="module")
async def metered(
    base_settings: Settings, binaries: Binaries, pool_http: PoolClient
) -> AsyncIterator[str]:
    """A real llama-server started with ``--metrics``."""
    args = (*server_args(binaries.generation_model), "--metrics")
    spec = ChildSpec("pool-metered", "generation", args, free_port())
    supervisor = await start_children(
        binaries.llama_server, [spec], logs_dir=base_settings.logs_dir, http=pool_http
    )
    yield spec.url
    await supervisor.stop()


@pytest.fixture(scope="module")
async def balancer(metered: str) -> AsyncIterator[str]:
    app = create_balancer_app(balancer_settings(upstreams=[metered], poll_interval=0.2))
    async with serving(app) as url:
        async with httpx.AsyncClient(timeout=5.0) as http:
            assert await wait_for(lambda: answers_health(http, url), within=30)
        yield url


@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=[f"{m} {p}" for m, p, _ in CALLS])
async def test_answered_as_the_upstream_answers(
    metered: str, balancer: str, method: str, path: str, body: Any
) -> None:
    async with httpx.AsyncClient(timeout=60.0, headers=ORIGIN) as http:
        direct = await http.request(method, metered + path, json=body)
        through = await http.request(method, balancer + path, json=body)
    assert through.status_code == direct.status_code, through.text
    for header in ("access-control-allow-origin", "access-control-allow-methods",
                   "access-control-allow-headers", "content-type"):  # fmt: skip
        assert through.headers.get(header) == direct.headers.get(header), header
    if direct.status_code < 300 and "json" in direct.headers.get("content-type", ""):
        assert type(through.json()) is type(direct.json())


async def test_metrics_have_the_pools_families_and_the_upstreams_by_upstream(
    metered: str, balancer: str
) -> None:
    async with httpx.AsyncClient(timeout=60.0) as http:
        await http.post(f"{balancer}/completion", json={"prompt": "Hi", "n_predict": 2})
        response = await http.get(f"{balancer}/metrics")
    text = response.text
    assert "rag_pool_upstream_requests_total" in text
    assert f'llamacpp:tokens_predicted_total{{upstream="{metered}"}}' in text
    assert "\nllamacpp:tokens_predicted_total " in text  # aggregated, as one llama-server
    assert text.count("# TYPE llamacpp:tokens_predicted_total counter") == 1
    assert "Process-Start-Time-Unix" in response.headers


async def test_upstreams_with_an_api_key(
    base_settings: Settings, binaries: Binaries, pool_http: PoolClient
) -> None:
    """Upstreams started with ``--api-key``: the balancer's polls and its proxied requests send
    the key it was given (``upstream_api_key``), so they count as healthy and answer; clients
    send a client key (``api_keys``), which never reaches the upstream, and the upstreams' own
    key is no client key."""
    args = (*server_args(binaries.generation_model), "--api-key", "secret-key")
    spec = ChildSpec("pool-keyed", "generation", args, free_port())
    supervisor = await start_children(
        binaries.llama_server, [spec], logs_dir=base_settings.logs_dir, http=pool_http
    )
    try:
        settings = balancer_settings(
            upstreams=[spec.url],
            poll_interval=0.2,
            upstream_api_key="secret-key",
            api_keys=["client-key"],
        )
        async with serving(create_balancer_app(settings)) as url, httpx.AsyncClient() as http:
            assert await wait_for(lambda: answers_health(http, url), within=30)
            body = {"prompt": "Hi", "n_predict": 2}
            refused = await http.post(f"{url}/completion", json=body)
            assert refused.status_code == 401
            upstream_key = {"Authorization": "Bearer secret-key"}
            refused = await http.post(f"{url}/completion", json=body, headers=upstream_key)
            assert refused.status_code == 401
            keyed = {"Authorization": "Bearer client-key"}
            answered = await http.post(f"{url}/completion", json=body, headers=keyed, timeout=60)
            assert answered.status_code == 200
    finally:
        await supervisor.stop()


def _llamacpp_lines(text: str) -> list[str]:
    """The upstreams' llama.cpp families of a balancer's /metrics (samples, HELP and TYPE)."""
    return [line for line in text.splitlines() if "llamacpp:" in line]


@contextlib.asynccontextmanager
async def _sleepy_balancer(
    settings: Settings, binaries: Binaries, http: PoolClient, poll_quiet: float
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """A balancer polling every 0.2 s in front of a llama-server that sleeps after 1 idle s."""
    args = (*server_args(binaries.generation_model), "--metrics", "--sleep-idle-seconds", "1")
    spec = ChildSpec("pool-sleepy", "generation", args, free_port())
    supervisor = await start_children(
        binaries.llama_server, [spec], logs_dir=settings.logs_dir, http=http
    )
    try:
        config = balancer_settings(upstreams=[spec.url], poll_interval=0.2, poll_quiet=poll_quiet)
        async with serving(create_balancer_app(config)) as url, httpx.AsyncClient() as client:
            assert await wait_for(lambda: answers_health(client, url), within=30)
            answered = await client.post(
                f"{url}/completion", json={"prompt": "Hello", "n_predict": 4}, timeout=60
            )
            assert answered.status_code == 200
            yield url, client
    finally:
        await supervisor.stop()


async def _sleeping(http: httpx.AsyncClient, url: str) -> bool:
    return bool((await http.get(f"{url}/props", timeout=10)).json()["is_sleeping"])


async def _quiet(http: httpx.AsyncClient, url: str) -> bool:
    (upstream,) = (await http.get(f"{url}/v1/pool", timeout=10)).json()["upstreams"]
    return bool(upstream["quiet"])


async def test_an_idle_upstream_sleeps_and_its_metrics_stay_as_they_were(
    base_settings: Settings, binaries: Binaries, pool_http: PoolClient
) -> None:
    """llama-server's ``--sleep-idle-seconds`` behind the pool: once the pool has had no request
    there for ``poll_quiet`` s it polls ``/health`` only (a ``GET /slots`` would wake the server
    and restart its idle timer), so the server falls asleep; read-only requests through the
    balancer (/props, /metrics) do not wake it, and its families on the balancer's /metrics stay
    byte for byte what they were before it slept (llama.cpp's
    ``test_sleep::test_server_sleep_read_only_endpoints`` compares the whole scrape, which the
    pool's own counters of those requests move: docs/pool.md). A request wakes it and answers,
    and the polls of ``/slots`` come back."""
    async with _sleepy_balancer(base_settings, binaries, pool_http, poll_quiet=0.5) as (url, http):
        await http.get(f"{url}/metrics")  # the first scrape resets the throughput buckets
        awake = (await http.get(f"{url}/metrics")).text
        assert "llamacpp:tokens_predicted_total" in awake
        assert await wait_for(lambda: _sleeping(http, url), within=15)
        assert await _quiet(http, url)
        asleep = (await http.get(f"{url}/metrics")).text
        assert _llamacpp_lines(asleep) == _llamacpp_lines(awake)
        assert asleep != awake  # the pool's own counters did count the requests between
        await asyncio.sleep(1.0)  # five of the pool's rounds
        assert await _sleeping(http, url)
        body = {"prompt": "Hello", "n_predict": 2}
        answered = await http.post(f"{url}/completion", json=body, timeout=60)
        assert answered.status_code == 200 and answered.json()["content"]
        assert not await _sleeping(http, url)
        assert await wait_for(lambda: _not(_quiet(http, url)), within=5)


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


async def test_an_upstream_polled_for_its_slots_never_sleeps(
    base_settings: Settings, binaries: Binaries, pool_http: PoolClient
) -> None:
    """Why quiet polling is there: with it off (``poll_quiet=0``), the pool's ``/slots`` polls
    keep a ``--sleep-idle-seconds 1`` server awake well past its idle second."""
    async with _sleepy_balancer(base_settings, binaries, pool_http, poll_quiet=0) as (url, http):
        await asyncio.sleep(3.0)
        assert not await _sleeping(http, url)
        assert not await _quiet(http, url)
