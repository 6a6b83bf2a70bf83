"""The whole llama-server HTTP API through ``rag balancer``: every route and method the
upstream answers goes through with the upstream's own status, CORS headers and body (Anthropic
Messages, Responses, token counting, slots, LoRA adapters, preflights, unknown paths and model
names with slashes); ``/metrics`` has the pool's families and the upstreams', by upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
