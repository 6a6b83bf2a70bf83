"""Busy polling (``RAG_BALANCER_BUSY_POLL``): the event loop keeps turning from each proxied
request until the window after it has passed, then sleeps; the balancer serves as before."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rag.balancer import balancer_settings, create_balancer_app
from rag.balancer.busypoll import BusyPoll
from rag.balancer.proxy import ProxyApp
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
