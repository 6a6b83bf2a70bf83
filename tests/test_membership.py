"""Supervised children join a pool when healthy and leave it when stopped or removed: the one
membership mechanism (``follow_supervisor``), on real llama-server children and a real pool."""

from __future__ import annotations

import httpx

from rag.core.pool.client import pool_client
from rag.core.pool.settings import PoolSettings, build_pool
from rag.core.runtime.children import embedding_args
from rag.core.runtime.membership import follow_supervisor
from rag.core.runtime.prepare import PreparedRuntime
from rag.core.runtime.supervisor import ChildSpec, ChildState, Supervisor, free_port
from rag.core.settings import Settings
from tests.conftest import wait_for


async def test_children_join_when_healthy_and_leave_when_removed_or_stopped(
    base_settings: Settings, runtime: PreparedRuntime, session_http: httpx.AsyncClient
) -> None:
    args = embedding_args(base_settings, runtime.embedding_model)
    specs = [ChildSpec(f"member-{i}", "embedding", args, free_port()) for i in range(2)]
    other = ChildSpec("member-gen", "generation", args, free_port())  # another role: not joined
    async with pool_client(connect=1.0, read=30.0) as http:
        pool = build_pool("members", http, PoolSettings(poll_interval=0.2))
        await pool.start()
        supervisor = Supervisor(
            runtime.llama_server, [*specs, other], logs_dir=base_settings.logs_dir, http=http
        )
        follow_supervisor(pool, supervisor, "embedding")
        assert pool.urls == []  # nothing joins before it is healthy
        await supervisor.start()
        try:
            assert await wait_for(lambda: sorted(pool.urls) == sorted(s.url for s in specs), 120)
            assert await wait_for(
                lambda: all(u["state"] == "healthy" for u in pool.status()["upstreams"]), 30
            )
            answer = await pool.request("POST", "/v1/embeddings", json={"input": ["joined"]})
            assert len(answer.json()["data"][0]["embedding"]) == 384

            gone = supervisor.children[0]
            await supervisor.remove(gone.spec.name)
            assert gone.state is ChildState.STOPPED and gone.pid is None
            assert await wait_for(lambda: pool.urls == [specs[1].url], 10)
            # the removed server is really gone, and is not restarted
            try:
                await session_http.get(f"{specs[0].url}/health", timeout=2.0)
                reachable = True
            except httpx.HTTPError:
                reachable = False
            assert not reachable
            assert [c.spec.name for c in supervisor.children] == ["member-1", "member-gen"]
        finally:
            await supervisor.stop()
        assert await wait_for(lambda: pool.urls == [], 10)  # stopped children leave too
        await pool.stop()
