"""Supervised children with ``api_keys`` (the service's) start with a generated ``--api-key``,
read from their environment: without it llama-server refuses everything but ``/health``; the
pool that follows the supervisor sends each start's key, also after a restart; and a child that
leaves takes its series out of the pool's metrics. Real llama-server children, a real pool."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from rag.core.pool.client import pool_client
from rag.core.pool.metrics import PoolMetrics
from rag.core.pool.settings import PoolSettings, build_pool
from rag.core.pool.upstream import Upstream
from rag.core.runtime.children import embedding_args
from rag.core.runtime.membership import follow_supervisor
from rag.core.runtime.prepare import PreparedRuntime
from rag.core.runtime.supervisor import ChildSpec, ChildState, Supervisor, free_port
from rag.core.settings import Settings
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

EMBED = {"input": ["keyed"]}


def series(text: str, name: str, url: str) -> list[str]:
    """The samples of ``name`` labelled with upstream ``url`` in a scrape."""
    return [
        line for line in text.splitlines()
        if line.startswith(name + "{") and f'upstream="{url}"' in line
    ]  # fmt: skip


def _cmdline(pid: int | None) -> bytes:
    """What ``ps`` shows every user of the machine."""
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_children_want_their_key_and_the_pool_sends_each_starts_own(
    base_settings: Settings, runtime: PreparedRuntime, session_http: httpx.AsyncClient
) -> None:
    args = embedding_args(base_settings, runtime.embedding_model)
    specs = [ChildSpec(f"keyed-{i}", "embedding", args, free_port()) for i in range(2)]
    metrics = PoolMetrics()
    async with pool_client(connect=1.0, read=30.0) as http:
        pool = build_pool("keyed", http, PoolSettings(poll_interval=0.2), metrics)
        await pool.start()
        supervisor = Supervisor(
            runtime.llama_server, specs, logs_dir=base_settings.logs_dir, http=http,
            backoff_max=1.0, api_keys=True,
        )  # fmt: skip
        follow_supervisor(pool, supervisor, "embedding")
        await supervisor.start()
        try:
            assert await wait_for(
                lambda: (
                    len(pool.urls) == 2
                    and all(u["state"] == "healthy" for u in pool.status()["upstreams"])
                ),
                120,
            )  # the polls of /slots and /props carry the key, or they would see 401s
            first, second = supervisor.children
            keys = {child.api_key for child in supervisor.children}
            assert None not in keys and len(keys) == 2  # one key per child
            for child in supervisor.children:
                url = child.spec.url
                assert (await session_http.get(f"{url}/health")).status_code == 200
                for path in ("/slots", "/props", "/metrics"):
                    assert (await session_http.get(url + path)).status_code == 401, path
                refused = await session_http.post(f"{url}/v1/embeddings", json=EMBED)
                assert refused.status_code == 401
                assert refused.json()["error"]["type"] == "authentication_error"
                cmdline = _cmdline(child.pid)
                assert child.api_key is not None and child.api_key.encode() not in cmdline
            for _ in range(4):  # both children answer the pool
                answer = await pool.request("POST", "/v1/embeddings", json=EMBED)
                assert len(answer.json()["data"][0]["embedding"]) == 384
            served = generate_latest(metrics.registry).decode()
            assert all(f'upstream="{s.url}"' in served for s in specs)

            # a restart is a new start: a new key, which the pool gets with it
            old_key, old_pid = first.api_key, first.pid
            assert old_pid is not None
            os.kill(old_pid, signal.SIGKILL)
            assert await wait_for(
                lambda: first.pid not in (None, old_pid) and first.state is ChildState.HEALTHY,
                60,
            )
            assert first.api_key != old_key
            stale = {"Authorization": f"Bearer {old_key}"}
            gone = await session_http.get(f"{first.spec.url}/slots", headers=stale)
            assert gone.status_code == 401
            assert await wait_for(
                lambda: all(u["state"] == "healthy" for u in pool.status()["upstreams"]), 30
            )
            for _ in range(4):
                answer = await pool.request("POST", "/v1/embeddings", json=EMBED)
                assert answer.status_code == 200

            # a child that leaves takes its series with it
            await supervisor.remove(second.spec.name)
            assert await wait_for(lambda: pool.urls == [first.spec.url], 10)
            served = generate_latest(metrics.registry).decode()
            assert second.spec.url not in served
            assert series(served, "rag_pool_upstream_requests_total", first.spec.url)
        finally:
            await supervisor.stop()
            await pool.stop()


def test_series_of_upstreams_a_pool_no_longer_holds_are_dropped_at_scrape() -> None:
    """Plain values: the pool's per-upstream counters keep only its current upstreams."""
    metrics = PoolMetrics()
    members = {"http://a:1": Upstream("http://a:1")}
    metrics.upstreams.watch("p", members)
    for url in ("http://a:1", "http://b:2"):
        metrics.requests.labels("p", url, "200").inc()
        metrics.upstream_errors.labels("p", url, "ReadError").inc()
    metrics.requests.labels("unwatched", "http://b:2", "200").inc()  # another owner's: kept
    text = generate_latest(metrics.registry).decode()
    assert series(text, "rag_pool_upstream_requests_total", "http://a:1") == [
        'rag_pool_upstream_requests_total{pool="p",status="200",upstream="http://a:1"} 1.0'
    ]
    assert series(text, "rag_pool_upstream_errors_total", "http://a:1")
    assert series(text, "rag_pool_upstream_requests_total", "http://b:2") == [
        'rag_pool_upstream_requests_total{pool="unwatched",status="200",upstream="http://b:2"} 1.0'
    ]
    assert series(text, "rag_pool_upstream_errors_total", "http://b:2") == []
    metrics.requests.labels("p", "http://b:2", "200").inc()  # registered again later: counts
    members["http://b:2"] = Upstream("http://b:2")
    text = generate_latest(metrics.registry).decode()
    assert len(series(text, "rag_pool_upstream_requests_total", "http://b:2")) == 2
