"""Supervise local ``llama-server`` children: start, wait for health, restart, stop.

Each child runs in its own session (a Ctrl-C in the terminal reaches only the service, which then
stops the children in order) and with a parent-death signal, so that even a SIGKILLed service
leaves no ``llama-server`` behind. A child that exits, or does not become healthy in time, is
restarted with exponential backoff; its output goes to ``logs/<name>.log``.

With ``api_keys`` (the service's children) each start of a child gets a new random API key
(``Child.api_key``, 256 bits), which llama-server reads from ``LLAMA_API_KEY`` in its environment
(not from its command line, which ``ps`` shows to every user): every route but ``/health`` then
needs it as ``Authorization: Bearer``. ``membership.py`` hands it to the pools, which send it on
every request and poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rag.core.processes import die_with_parent

log = logging.getLogger(__name__)

HEALTHY_RESET_AFTER = 60.0  # seconds of health after which the backoff starts again from 1 s


class ChildState(enum.StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ChildSpec:
    name: str
    role: str  # "embedding" or "generation"
    args: tuple[str, ...]  # everything but --host/--port
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Child:
    spec: ChildSpec
    state: ChildState = ChildState.STOPPED
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    healthy_since: float | None = None
    api_key: str | None = field(default=None, repr=False)  # this start's; None before the first
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)


Listener = Callable[[Child], None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_service() -> None:
    # SIGKILL, not SIGTERM: nobody is left to answer, and llama-server can hang in its own
    # shutdown (seen once in CI: HTTP threads gone, main thread on a futex, SIGTERM blocked)
    die_with_parent(sig=signal.SIGKILL)


class Supervisor:
    def __init__(
        self,
        binary: Path,
        specs: list[ChildSpec],
        *,
        logs_dir: Path,
        http: httpx.AsyncClient,
        start_timeout: float = 120.0,
        backoff_max: float = 30.0,
        stop_timeout: float = 10.0,
        api_keys: bool = False,
    ) -> None:
        self.binary = binary
        self.children = [Child(spec) for spec in specs]
        self.logs_dir = logs_dir
        self.http = http
        self.start_timeout = start_timeout
        self.backoff_max = backoff_max
        self.stop_timeout = stop_timeout
        self.api_keys = api_keys
        self._listeners: list[Listener] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._removing: set[str] = set()

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(child)`` on every state change (``membership.follow_supervisor``
        registers children in pools through it; the service's metrics follow them too)."""
        self._listeners.append(listener)

    def _set(self, child: Child, state: ChildState) -> None:
        if child.state is state:
            return
        child.state = state
        child.healthy_since = time.monotonic() if state is ChildState.HEALTHY else None
        log.info("llama-server %s (%s): %s", child.spec.name, child.spec.url, state.value)
        for listener in self._listeners:
            listener(child)

    async def start(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._stopping = False
        for child in self.children:
            self._tasks[child.spec.name] = asyncio.create_task(
                self._keep_running(child), name=child.spec.name
            )

    async def wait_healthy(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.all_healthy():
                return True
            await asyncio.sleep(0.1)
        return self.all_healthy()

    def all_healthy(self) -> bool:
        return all(child.state is ChildState.HEALTHY for child in self.children)

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*(self._terminate(c) for c in self.children), return_exceptions=True)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        for child in self.children:
            self._set(child, ChildState.STOPPED)

    async def remove(self, name: str) -> None:
        """Stop the child ``name`` for good (no restart) and forget it; listeners see it
        ``STOPPED`` last."""
        child = next((c for c in self.children if c.spec.name == name), None)
        if child is None:
            raise KeyError(name)
        self._removing.add(name)
        try:
            await self._terminate(child)
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            self.children.remove(child)
            self._set(child, ChildState.STOPPED)
        finally:
            self._removing.discard(name)

    async def _keep_running(self, child: Child) -> None:
        backoff = 1.0
        while not self._stopping:
            started = time.monotonic()
            code = await self._run_once(child)
            if self._stopping or child.spec.name in self._removing:
                return
            child.last_exit = code
            child.restarts += 1
            if time.monotonic() - started > HEALTHY_RESET_AFTER:
                backoff = 1.0
            log.warning(
                "llama-server %s exited with %s; restarting in %.0f s (restart %d)",
                child.spec.name, code, backoff, child.restarts,
            )  # fmt: skip
            self._set(child, ChildState.BACKOFF)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)

    async def _run_once(self, child: Child) -> int | None:
        spec = child.spec
        command = [str(self.binary), *spec.args, "--host", "127.0.0.1", "--port", str(spec.port)]
        env = None  # the service's own environment
        if self.api_keys:
            child.api_key = secrets.token_urlsafe(32)
            env = {**os.environ, "LLAMA_API_KEY": child.api_key}
        self._set(child, ChildState.STARTING)
        logfile = (self.logs_dir / f"{spec.name}.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_service,
            )
        except OSError as exc:
            logfile.close()
            log.error("cannot start llama-server %s: %s", spec.name, exc)
            return None
        child.process, child.pid = process, process.pid
        try:
            watcher = asyncio.create_task(self._watch_health(child, process))
            try:
                return await process.wait()
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        finally:
            logfile.close()
            child.process, child.pid = None, None

    async def _watch_health(self, child: Child, process: asyncio.subprocess.Process) -> None:
        """Mark the child healthy when /health answers 200; kill it if it never does."""
        deadline = time.monotonic() + self.start_timeout
        url = f"{child.spec.url}/health"
        while process.returncode is None:
            try:
                response = await self.http.get(url, timeout=2.0)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                self._set(child, ChildState.HEALTHY)
                deadline = time.monotonic() + self.start_timeout
            elif child.state is ChildState.HEALTHY:
                self._set(child, ChildState.STARTING)  # alive but not answering: loading again?
            elif time.monotonic() > deadline:
                log.error(
                    "llama-server %s not healthy after %.0f s; killing it (see %s)",
                    child.spec.name, self.start_timeout, self.logs_dir / f"{child.spec.name}.log",
                )  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                return
            await asyncio.sleep(1.0 if ok else 0.2)

    async def _terminate(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), self.stop_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
