"""Busy polling (``RAG_BALANCER_BUSY_POLL``): the event loop keeps turning from each proxied
request until the window after it has passed, then sleeps; the balancer serves as before."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from pydantic import ValidationError

from rag.balancer import balancer_settings, create_balancer_app
from rag.balancer.busypoll import AUTO_BUSY_POLL, AUTO_BUSY_POLL_CPUS, BusyPoll, window_for
from rag.balancer.proxy import ProxyApp
from rag.balancer.settings import BalancerSettings
from rag.core.runtime.gpu import list_gpus
from tests.conftest import wait_for
from tests.pool.conftest import answers_health, serving

WINDOW = 0.5


async def test_the_loop_turns_within_the_window_and_sleeps_after_it() -> None:
    poll = BusyPoll(WINDOW)
    poll.start()
    try:
        await asyncio.sleep(0.05)
        assert not poll.polling and poll.turns == 0  # nothing came: the loop sleeps
        poll.touch()
        await asyncio.sleep(0.05)
        assert poll.polling
        assert poll.turns > 100  # a turn per loop iteration, not per timer tick
        assert await wait_for(lambda: not poll.polling, within=5)  # the window has passed
        idle_turns = poll.turns
        await asyncio.sleep(0.1)
        assert poll.turns == idle_turns  # asleep: no turns at all
        poll.touch()  # the next request wakes it at once
        await asyncio.sleep(0.01)
        assert poll.polling and poll.turns > idle_turns
    finally:
        await poll.stop()


@pytest.mark.integration
async def test_a_busy_polling_balancer_proxies_and_rests_when_idle(upstreams: list[str]) -> None:
    app = create_balancer_app(
        balancer_settings(upstreams=upstreams, poll_interval=0.2, busy_poll=WINDOW)
    )
    assert isinstance(app, ProxyApp) and app.busy is not None
    busy = app.busy
    async with serving(app) as url, httpx.AsyncClient(timeout=30.0) as http:
        assert await wait_for(lambda: answers_health(http, url), within=30)
        assert busy.turns == 0  # its own routes (health) do not wake it
        answer = await http.post(f"{url}/completion", json={"prompt": "Hi", "n_predict": 2})
        assert answer.status_code == 200 and "content" in answer.json()
        assert busy.turns > 0
        assert await wait_for(lambda: not busy.polling, within=5)


def test_auto_polls_on_a_gpu_host_with_cores_to_spare_and_not_elsewhere() -> None:
    def one_gpu() -> int:
        return 1

    def no_gpu() -> int:
        return 0

    def must_not_probe() -> int:
        raise AssertionError("nvidia-smi probed on a small machine")

    assert window_for("auto", gpus=one_gpu, cpus=16) == AUTO_BUSY_POLL
    assert window_for("auto", gpus=no_gpu, cpus=16) == 0.0  # CPU upstreams need the core
    assert window_for("auto", gpus=must_not_probe, cpus=2) == 0.0
    assert window_for(0.2, gpus=must_not_probe) == 0.2  # a number is taken as it is
    assert window_for(0.0, gpus=must_not_probe) == 0.0


def test_the_setting_reads_auto_or_seconds_and_refuses_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAG_BALANCER_BUSY_POLL", raising=False)
    assert BalancerSettings().busy_poll == "auto"  # the default
    monkeypatch.setenv("RAG_BALANCER_BUSY_POLL", "0.05")
    assert BalancerSettings().busy_poll == 0.05
    monkeypatch.setenv("RAG_BALANCER_BUSY_POLL", "0")
    assert BalancerSettings().busy_poll == 0.0
    for wrong in ("-1", "61", "soon"):
        monkeypatch.setenv("RAG_BALANCER_BUSY_POLL", wrong)
        with pytest.raises(ValidationError, match="busy_poll"):
            BalancerSettings()


def test_this_machine_resolves_auto_as_its_gpus_say() -> None:
    """The real probe: on CI (no GPU, or 2 CPUs) auto is off; on a GPU host it is on."""
    found = len(list_gpus()) if (os.cpu_count() or 1) >= AUTO_BUSY_POLL_CPUS else 0
    assert window_for("auto") == (AUTO_BUSY_POLL if found else 0.0)
