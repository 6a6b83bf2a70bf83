"""One retry layer: the pool. With every slot of the embedding pool busy and its buffer full, a
search gets its 429 at once and the request waiting in the buffer its 503, both with
``Retry-After``, within the configured buffer timeout: the embedder adds no retries of its own
(it once retried 4 times with backoff, on top of the pool's wait: minutes, not seconds).

The slots are held the way any caller holds them: upstream streams opened through the service's
own pool and kept open. Their answers come back at once, so the real llama-server is idle and the
pool alone says "busy"; nothing here depends on how fast the server is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from rag.api.app import create_app
from rag.core.pool import Pool
from rag.core.settings import Settings
from rag.service.components import Components
from tests.conftest import RunningServer, serve_app, service_settings, wait_for

BUFFER_TIMEOUT = 1.0
MARGIN = 1.5
"""What the answer may take beyond the buffer timeout (the HTTP round trip on a busy 2-core
machine). The embedder's old retries alone added 4 x the timeout plus 1.75 s of backoff."""


async def hold_every_slot(pool: Pool, stack: contextlib.AsyncExitStack) -> None:
    def slots() -> tuple[int, int]:
        (upstream,) = pool.status()["upstreams"]
        return upstream["slots_busy"], upstream["slots_total"]

    assert await wait_for(lambda: slots()[1] > 0, within=30), pool.status()
    for _ in range(slots()[1]):
        await stack.enter_async_context(
            pool.stream("POST", "/v1/embeddings", json={"input": ["held"]})
        )
    busy, total = slots()
    assert busy == total, pool.status()


@pytest.mark.integration
async def test_a_saturated_pool_answers_429_and_503_within_the_buffer_timeout(
    base_settings: Settings, tmp_path: Path, embedding_server: RunningServer
) -> None:
    pool_settings = base_settings.pool.model_copy(
        update={"poll_interval": 0.2, "buffer_size": 1, "buffer_timeout": BUFFER_TIMEOUT}
    )
    settings = service_settings(
        base_settings, tmp_path / "data", embedding_server, pool=pool_settings
    )
    app = create_app(settings)
    body = {"query": "does vitamin D prevent fractures?", "collection": "anything"}
    async with serve_app(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        components: Components = app.state.components
        pool = components.embedding_pool
        assert components.query_embedder.upstream is pool  # no query servers: the shared pool
        async with contextlib.AsyncExitStack() as held:
            await hold_every_slot(pool, held)

            started = time.monotonic()
            waiting = asyncio.ensure_future(http.post("/v1/search", json=body))
            assert await wait_for(lambda: pool.status()["buffered"] == 1), pool.status()
            rejected = await http.post("/v1/search", json=body)
            rejected_after = time.monotonic() - started
            timed_out = await waiting
            timed_out_after = time.monotonic() - started
            assert pool.status()["upstreams"][0]["slots_free"] == 0  # held all along

    assert rejected.status_code == 429, rejected.text
    assert rejected.json()["error"]["type"] == "rate_limited"
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected_after < BUFFER_TIMEOUT + MARGIN

    assert timed_out.status_code == 503, timed_out.text
    assert timed_out.json()["error"]["type"] == "upstream_unavailable"
    assert int(timed_out.headers["retry-after"]) >= 1
    assert BUFFER_TIMEOUT <= timed_out_after < BUFFER_TIMEOUT + MARGIN
