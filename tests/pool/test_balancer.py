"""``rag balancer`` over real llama-servers: the endpoints, 429/503, disconnects, membership,
metrics, and the official ``openai`` client, streaming and not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rag.balancer import BalancerSettings, balancer_settings, create_balancer_app
from rag.core.pool.client import PoolClient
from rag.core.runtime.supervisor import free_port
from rag.core.settings import Settings
from tests.conftest import wait_for
from tests.pool.conftest import (
    Binaries,
    answers_health,
    busy_generations,
    busy_slots,
    serving,
    start_servers,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHORT = {"prompt": "The capital of France is", "n_predict": 4}


def settings(upstreams: list[str], **options: Any) -> BalancerSettings:
    return balancer_settings(upstreams=upstreams, poll_interval=0.2, **options)


@pytest.fixture(scope="module")
async def balancer(upstreams: list[str]) -> AsyncIterator[str]:
    app = create_balancer_app(settings(upstreams, buffer_size=1, buffer_timeout=2.0))
    async with serving(app) as url:
        async with httpx.AsyncClient(timeout=5.0) as http:
            assert await wait_for(lambda: answers_health(http, url), within=30)
        yield url


async def hold(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], started: asyncio.Event
) -> None:
    async with http.stream("POST", f"{url}/completion", json=body) as response:
        assert response.status_code == 200
        async for _ in response.aiter_raw():
            started.set()
            await asyncio.Event().wait()


async def cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_llama_cpp_endpoints_pass_through(balancer: str) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0)) as http:
        health = await http.get(f"{balancer}/health")
        assert health.json()["upstreams_ready"] == 2
        models = await http.get(f"{balancer}/v1/models")
        assert models.status_code == 200
        assert models.json()["data"]
        assert "total_slots" in (await http.get(f"{balancer}/props")).json()
        tokens = (await http.post(f"{balancer}/tokenize", json={"content": "hello world"})).json()
        assert tokens["tokens"]
        text = await http.post(f"{balancer}/detokenize", json={"tokens": tokens["tokens"]})
        assert "hello world" in text.json()["content"]
        answer = await http.post(f"{balancer}/completion", json=SHORT)
        assert answer.status_code == 200
        assert answer.json()["tokens_predicted"] > 0
        events: list[dict[str, Any]] = []
        body = {**SHORT, "stream": True}
        async with http.stream("POST", f"{balancer}/completion", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line.removeprefix("data: ")))
        assert events[-1]["stop"] is True
        assert "x-request-id" in answer.headers
        # the upstream's own 4xx / 501 answers reach the client unchanged
        bad = await http.post(f"{balancer}/completion", content=b"not json")
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"
        embeddings = await http.post(f"{balancer}/v1/embeddings", json={"input": "x"})
        assert embeddings.status_code == 501
        assert embeddings.json()["error"]["type"] == "not_supported_error"


async def test_buffer_full_is_429_and_waiting_too_long_is_503(
    balancer: str, upstreams: list[str], hold_body: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0)) as http:
        holders = []
        try:
            for _ in range(4):  # every slot of both upstreams
                started = asyncio.Event()
                holders.append(asyncio.create_task(hold(http, balancer, hold_body, started)))
                await asyncio.wait_for(started.wait(), 60)
            waiting = asyncio.create_task(http.post(f"{balancer}/completion", json=SHORT))
            assert await wait_for(lambda: _buffered(http, balancer, 1))
            full = await http.post(f"{balancer}/completion", json=SHORT)
            assert full.status_code == 429
            assert full.json()["error"]["type"] == "rate_limited"
            assert int(full.headers["retry-after"]) >= 1
            timed_out = await asyncio.wait_for(waiting, 30)
            assert timed_out.status_code == 503
            assert timed_out.json()["error"]["type"] == "upstream_unavailable"
            assert int(timed_out.headers["retry-after"]) >= 1
        finally:
            await cancel(*holders)
        for url in upstreams:
            assert await wait_for(lambda url=url: _idle(http, url), within=10)


async def _buffered(http: httpx.AsyncClient, url: str, n: int) -> bool:
    return (await http.get(f"{url}/v1/pool")).json()["buffered"] == n


async def _idle(http: httpx.AsyncClient, url: str) -> bool:
    return await busy_slots(http, url) == 0


async def test_client_disconnect_frees_the_slot(
    balancer: str, upstreams: list[str], hold_body: dict[str, Any]
) -> None:
    """A client that leaves mid-stream frees its slot long before its generation would end."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0)) as http:
        async with http.stream("POST", f"{balancer}/completion", json=hold_body) as response:
            lines = response.aiter_lines()
            await anext(lines)
            (held,) = [url for url in upstreams if await busy_slots(http, url)]
            (first,) = await busy_generations(http, held)
            started = time.monotonic()
            for _ in range(100):  # a hundred tokens or so, to measure the server's speed
                await anext(lines)
            (then,) = await busy_generations(http, held)
            left = time.monotonic()
        # the client is gone; undisturbed, the generation would run ``remaining`` more tokens
        speed = (then.decoded - first.decoded) / (left - started)  # tokens per second
        would_end = then.remaining / speed  # seconds after the client left
        assert would_end > 2.0, f"the hold is too short to tell ({then}, {speed:.0f} tokens/s)"
        freed = await wait_for(lambda: _all_idle(http, upstreams), within=would_end / 3)
        assert freed, f"a slot still busy {time.monotonic() - left:.1f} s after the client left"
        pool = (await http.get(f"{balancer}/v1/pool")).json()
        assert sum(u["requests_in_flight"] for u in pool["upstreams"]) == 0


async def _all_idle(http: httpx.AsyncClient, urls: list[str]) -> bool:
    return all([await _idle(http, url) for url in urls])


async def test_client_that_leaves_before_a_whole_answer_frees_the_slot(
    base_settings: Settings, binaries: Binaries, pool_http: PoolClient
) -> None:
    """llama.cpp's ``test_cancel_request`` through the balancer: a non-streamed generation (its
    answer comes whole, at the end) whose client leaves after 0.3 s stops within two seconds.
    llama-server looks for a gone client only after a second in which no task of the server
    has ended, and each ``GET /slots`` is one: the pool's polls (here every 0.1 s, as in
    llama.cpp's suite) kept such a generation running to its end. Its own upstream: other
    pools' polls of the shared servers would keep it running too."""
    supervisor = await start_servers(base_settings, binaries, ["pool-cancel"], pool_http)
    (upstream,) = [child.spec.url for child in supervisor.children]
    try:
        app = create_balancer_app(balancer_settings(upstreams=[upstream], poll_interval=0.1))
        async with serving(app) as url, httpx.AsyncClient(timeout=60.0) as http:
            assert await wait_for(lambda: answers_health(http, url), within=30)
            body = {"prompt": "Count from one to one thousand: one, two,", "ignore_eos": True}
            probe = await http.post(f"{url}/completion", json={**body, "n_predict": 32})
            speed = probe.json()["timings"]["predicted_per_second"]
            tokens = 1900
            assert tokens / speed > 5.0, f"the generation is too short to tell ({speed:.0f}/s)"
            with pytest.raises(httpx.ReadTimeout):
                await http.post(
                    f"{url}/completion", json={**body, "n_predict": tokens}, timeout=0.3
                )
            await asyncio.sleep(2.0)  # no request of ours upstream: /slots would delay it too
            assert await _idle(http, upstream), "the generation went on after its client left"
            pool = (await http.get(f"{url}/v1/pool")).json()
            assert pool["upstreams"][0]["requests_in_flight"] == 0
    finally:
        await supervisor.stop()


async def test_membership_register_and_drain(balancer: str) -> None:
    spare = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with httpx.AsyncClient(timeout=10.0) as http:
        added = await http.post(f"{balancer}/v1/pool/upstreams", json={"url": spare})
        assert added.status_code == 201
        again = await http.post(f"{balancer}/v1/pool/upstreams", json={"url": spare + "/"})
        assert again.status_code == 200
        assert await wait_for(lambda: _state(http, balancer, spare, "unreachable"))
        # an unreachable member is never chosen
        assert (await http.post(f"{balancer}/completion", json=SHORT)).status_code == 200
        bad = await http.post(f"{balancer}/v1/pool/upstreams", json={"url": "not a url"})
        assert bad.status_code == 422
        removed = await http.delete(f"{balancer}/v1/pool/upstreams", params={"url": spare})
        assert removed.status_code in (200, 202)
        assert await wait_for(lambda: _state(http, balancer, spare, None))
        missing = await http.delete(f"{balancer}/v1/pool/upstreams", params={"url": spare})
        assert missing.status_code == 404


async def _state(http: httpx.AsyncClient, balancer: str, url: str, state: str | None) -> bool:
    upstreams = (await http.get(f"{balancer}/v1/pool")).json()["upstreams"]
    found = [u["state"] for u in upstreams if u["url"] == url]
    return found == ([state] if state else [])


async def test_metrics(balancer: str) -> None:
    async with httpx.AsyncClient(timeout=60.0) as http:
        body = {**SHORT, "stream": True}
        async with http.stream("POST", f"{balancer}/completion", json=body) as response:
            await response.aread()
        text = (await http.get(f"{balancer}/metrics")).text
    for name in (
        "rag_pool_slots_busy{",
        "rag_pool_slots_total{",
        "rag_pool_buffered_requests{",
        "rag_pool_buffer_wait_seconds_bucket{",
        "rag_pool_time_to_first_token_seconds_count{",
        "rag_pool_tokens_per_second_count{",
        "rag_pool_upstream_requests_total{",
    ):
        assert name in text, name
    ttft = [
        line
        for line in text.splitlines()
        if line.startswith("rag_pool_time_to_first_token_seconds_count")
    ]
    assert float(ttft[0].rsplit(" ", 1)[1]) >= 1


async def test_no_upstream_is_503() -> None:
    app = create_balancer_app(settings([]))
    async with serving(app) as url, httpx.AsyncClient(timeout=10.0) as http:
        answer = await http.post(f"{url}/completion", json=SHORT)
        assert answer.status_code == 503
        assert answer.json()["error"]["type"] == "upstream_unavailable"
        assert "retry-after" in answer.headers
        assert (await http.get(f"{url}/health")).status_code == 503


async def test_docs_list_the_proxied_endpoints(balancer: str) -> None:
    async with httpx.AsyncClient(timeout=10.0) as http:
        paths = (await http.get(f"{balancer}/openapi.json")).json()["paths"]
        assert (await http.get(f"{balancer}/docs")).status_code == 200
    for path in ("/completion", "/v1/chat/completions", "/v1/embeddings", "/tokenize"):
        assert "post" in paths[path], path
    assert "get" in paths["/v1/models"] and "get" in paths["/v1/pool"]


async def test_openai_client_streaming_and_not(balancer: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{balancer}/v1", api_key="unused", max_retries=0)
    async with client:
        messages: Any = [{"role": "user", "content": "Say hello."}]
        chat = await client.chat.completions.create(model="any", messages=messages, max_tokens=8)
        assert isinstance(chat.choices[0].message.content, str)
        assert chat.usage is not None
        assert chat.usage.completion_tokens > 0
        chunks = []
        stream = await client.chat.completions.create(
            model="any", messages=messages, max_tokens=8, stream=True
        )
        async for chunk in stream:
            chunks.append(chunk)
        assert chunks
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text
        completion = await client.completions.create(model="any", prompt="One, two,", max_tokens=4)
        assert completion.choices[0].text
        models = await client.models.list()
        assert models.data


def test_rag_balancer_command(upstreams: list[str], tmp_path: Path) -> None:
    """The operator's command, exactly as API.md gives it, in its own process."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "rag"), "balancer", "--port", str(port)]
    for url in upstreams:
        command += ["--upstream", url]
    log = tmp_path / "balancer.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(timeout=2.0) as http:
            ready = False
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    ready = http.get(f"http://127.0.0.1:{port}/health").status_code == 200
                if ready or process.poll() is not None:
                    break
                time.sleep(0.1)
            assert ready, log.read_text()
            status = http.get(f"http://127.0.0.1:{port}/v1/pool").json()
            assert [u["url"] for u in status["upstreams"]] == upstreams
    finally:
        process.terminate()
        process.wait(10)
