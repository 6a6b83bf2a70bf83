"""Busy polling: the balancer's event loop polls its sockets without sleeping while requests come.

A loop that sleeps in ``epoll_wait`` between requests is woken late and runs cold on a virtual
machine (its CPU is halted, then given back, caches gone) and on CPUs with deep idle states.
Measured on the H200 host (a VM, 16 vCPUs): with its loop kept turning, the balancer's added
latency on a one-token completion was 0.3 ms lower (``docs/benchmarks/pool-latency-h200.md``).
HAProxy's ``busy-polling`` option does the same.

``BusyPoll`` keeps the loop turning (a task that yields at every turn, so that ``epoll_wait``
gets a zero timeout) from each proxied request until ``window`` seconds after the last request
began or ended; then the loop sleeps again. An idle balancer costs nothing; one under traffic
keeps a core busy. ``RAG_BALANCER_BUSY_POLL=auto`` (the default, ``window_for``) turns it on where
that pays: a host with an NVIDIA GPU, whose upstreams answer a short request in a few ms (the
wake-up is then a tenth of it) and which has cores to spare; on a CPU-only host the core it would
take is llama-server's, so it stays off there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from rag.core.runtime.gpu import list_gpus

AUTO_BUSY_POLL = 0.05  # seconds: covers the gap between a client's answer and its next request
AUTO_BUSY_POLL_CPUS = 4


def window_for(
    setting: float | str,
    gpus: Callable[[], int] | None = None,
    cpus: int | None = None,
) -> float:
    """The busy-polling window ``setting`` asks for (0: off). ``auto``: ``AUTO_BUSY_POLL`` where
    ``gpus()`` (default: the NVIDIA GPUs ``nvidia-smi`` lists) finds one and the host has at
    least ``AUTO_BUSY_POLL_CPUS`` CPUs, else 0."""
    if setting != "auto":
        return float(setting)
    if (cpus if cpus is not None else os.cpu_count() or 1) < AUTO_BUSY_POLL_CPUS:
        return 0.0  # no probe: nvidia-smi is not run on a small machine
    found = gpus() if gpus is not None else len(list_gpus())
    return AUTO_BUSY_POLL if found > 0 else 0.0


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
