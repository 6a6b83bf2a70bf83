"""Busy polling: the balancer's event loop polls its sockets without sleeping while requests come.

A loop that sleeps in ``epoll_wait`` between requests is woken late and runs cold on a virtual
machine (its CPU is halted, then given back, caches gone) and on CPUs with deep idle states.
Measured on the H200 host (a VM, 16 vCPUs): with its loop kept turning, the balancer's added
latency on a one-token completion was 0.3 ms lower (``docs/benchmarks/pool-latency-h200.md``).
HAProxy's ``busy-polling`` option does the same.

``BusyPoll`` keeps the loop turning (a task that yields at every turn, so that ``epoll_wait``
gets a zero timeout) from each proxied request until ``window`` seconds after the last request
began or ended; then the loop sleeps again. An idle balancer costs nothing; one under traffic
keeps a core busy (``RAG_BALANCER_BUSY_POLL``, off by default: a deployment's choice).
"""

from __future__ import annotations

import asyncio
import contextlib


class BusyPoll:
    def __init__(self, window: float) -> None:
        self.window = window
        self.polling = False  # the loop is being kept turning now
        self.turns = 0  # loop turns spent polling, in all
        self._until = 0.0
        self._asleep: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def touch(self) -> None:
        """A request began or ended: poll until ``window`` seconds from now."""
        loop = asyncio.get_running_loop()
        self._until = loop.time() + self.window
        asleep = self._asleep
        if asleep is not None and not asleep.done():
            asleep.set_result(None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="busy-poll")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() < self._until:
                self.polling = True
                self.turns += 1
                await asyncio.sleep(0)  # one turn of the loop, whose poll then does not wait
                continue
            self.polling = False
            self._asleep = loop.create_future()
            try:
                await self._asleep
            finally:
                self._asleep = None
