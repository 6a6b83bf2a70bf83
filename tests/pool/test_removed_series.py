"""A removed upstream leaves the balancer's ``/metrics`` whole: neither the pool's own series
labelled with it nor its merged llama.cpp families stay. Two real llama-servers started with
``--metrics`` and ``--api-key`` (which the balancer's polls, requests and metric reads send)."""

from __future__ import annotations

import httpx
import pytest

from rag.balancer import balancer_settings, create_balancer_app
from rag.core.pool.client import PoolClient
from rag.core.runtime.supervisor import ChildSpec, free_port
from rag.core.settings import Settings
from tests.conftest import start_children, wait_for
from tests.pool.conftest import Binaries, server_args, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "upstream-secret"


def mentions(text: str, url: str) -> list[str]:
    return [line for line in text.splitlines() if url in line]


async def test_a_removed_upstreams_series_leave_metrics(
    base_settings: Settings, binaries: Binaries, pool_http: PoolClient
) -> None:
    args = (*server_args(binaries.generation_model), "--metrics", "--api-key", KEY)
    specs = [ChildSpec(f"pool-series-{n}", "generation", args, free_port()) for n in "ab"]
    supervisor = await start_children(
        binaries.llama_server, specs, logs_dir=base_settings.logs_dir, http=pool_http
    )
    kept, removed = (spec.url for spec in specs)
    settings = balancer_settings(
        upstreams=[kept, removed], poll_interval=0.2, policy="round-robin", upstream_api_key=KEY
    )
    try:
        async with serving(create_balancer_app(settings)) as url, httpx.AsyncClient() as http:

            async def both_healthy() -> bool:
                status = (await http.get(f"{url}/v1/pool")).json()
                return [u["state"] for u in status["upstreams"]] == ["healthy", "healthy"]

            assert await wait_for(both_healthy, within=30)
            assert (await http.get(f"{removed}/metrics")).status_code == 401  # needs the key
            for _ in range(4):  # round-robin: both serve some
                body = {"prompt": "Hi", "n_predict": 1}
                answer = await http.post(f"{url}/completion", json=body, timeout=60)
                assert answer.status_code == 200, answer.text
            before = (await http.get(f"{url}/metrics")).text
            for upstream in (kept, removed):
                lines = mentions(before, upstream)
                assert any(line.startswith("rag_pool_upstream_requests_total{") for line in lines)
                assert any(line.startswith("rag_pool_slots_total{") for line in lines)
                assert any(line.startswith("llamacpp:tokens_predicted_total{") for line in lines)

            gone = await http.delete(
                f"{url}/v1/pool/upstreams", params={"url": removed, "wait": "true"}
            )
            assert gone.status_code == 200, gone.text
            after = (await http.get(f"{url}/metrics")).text
            assert mentions(after, removed) == []
            assert any(
                line.startswith("llamacpp:tokens_predicted_total{")
                for line in mentions(after, kept)
            )
            assert any(
                line.startswith("rag_pool_upstream_requests_total{")
                for line in mentions(after, kept)
            )
            # the aggregate is the kept upstream's alone now
            total = next(
                line for line in after.splitlines()
                if line.startswith("llamacpp:tokens_predicted_total ")
            )  # fmt: skip
            labelled = next(
                line for line in mentions(after, kept)
                if line.startswith("llamacpp:tokens_predicted_total{")
            )  # fmt: skip
            assert float(total.split()[-1]) == float(labelled.split()[-1])
    finally:
        await supervisor.stop()
