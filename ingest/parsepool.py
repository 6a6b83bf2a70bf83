"""A supervised pool of parse processes: a deadline per document, a memory limit per process, and
a replacement for every process that overruns or dies.

``concurrent.futures.ProcessPoolExecutor`` cannot do this: a job cannot be stopped once it runs,
and one dead process leaves a ``BrokenProcessPool`` that fails every later job. Here each process
is a spawned child talking over its own pipe, and the pool knows which one runs which document:

* a call that passes its deadline gets its process SIGKILLed and :class:`ParseDeadline`;
* a process whose call raises ``MemoryError`` (its data segment is capped with
  ``RLIMIT_DATA``) answers :class:`ParseOutOfMemory` and is retired;
* a process that dies in a call (a crash, the kernel's OOM killer) gives
  :class:`ParseProcessDied`; one that dies while idle is noticed by the monitor;
* a retired or dead process is replaced in the background (with backoff if starting fails), and
  :meth:`ParsePool.status` is not ``ok`` until every process is back, so readiness shows it.

The function a call runs takes a ``progress(*values)`` keyword argument; what it reports
arrives at the caller's ``progress`` callback while the call runs. Everything crosses the pipe
pickled: functions by reference, exceptions as themselves (one that cannot be pickled arrives as
a ``RuntimeError`` naming it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from rag.core.errors import RagError

log = logging.getLogger(__name__)

Progress = Callable[..., Awaitable[None]]
START_TIMEOUT = 60.0
MONITOR_INTERVAL = 0.5
RESTART_BACKOFF_MAX = 30.0


class ParseDeadline(Exception):
    """The call ran past its deadline; its process was killed (and is being replaced)."""


class ParseOutOfMemory(Exception):
    """The call needed more memory than the per-process limit; its process was replaced."""


class ParseProcessDied(RagError):
    """The process died during the call (not the document's fault, as far as anyone can tell:
    the job is retried on the replacement)."""

    type = "parse_process_died"


@dataclass(frozen=True)
class ParsePoolOptions:
    processes: int = 1
    memory_bytes: int | None = None
    """Cap of each process's data segment (``RLIMIT_DATA``); ``None``: no cap."""
    initializer: Callable[[int], None] | None = None
    """Run in every new process with the parent's pid, before it takes work (warm-up)."""


def _serve(conn: Connection, parent: int, options: ParsePoolOptions) -> None:
    """The loop of one parse process: one call at a time, answers on the same pipe."""
    if options.initializer is not None:
        options.initializer(parent)
    if options.memory_bytes:
        resource.setrlimit(resource.RLIMIT_DATA, (options.memory_bytes, options.memory_bytes))
    conn.send(("ready", os.getpid()))

    def progress(*values: Any) -> None:
        conn.send(("progress", values))

    while True:
        try:
            func, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result = func(*args, progress=progress)
        except MemoryError:
            result = None  # drop whatever the call still holds before answering
            conn.send(("memory", None))
            return  # a fresh process, not a fragmented heap, takes the next call
        except Exception as exc:
            try:
                conn.send(("error", exc))
            except Exception:
                conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
            continue
        conn.send(("ok", result))


class _Process:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.retired = False

    @classmethod
    def start(cls, options: ParsePoolOptions) -> _Process:
        """Spawn one process and wait until it is warm (blocking: run in a thread)."""
        context = get_context("spawn")  # fork would copy every lock and descriptor we hold
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_serve, args=(theirs, os.getpid(), options), daemon=True, name="rag-parse"
        )
        process.start()
        theirs.close()
        child = cls(process, ours)
        try:
            if not ours.poll(START_TIMEOUT):
                raise RuntimeError(f"parse process did not start within {START_TIMEOUT} s")
            kind, _ = ours.recv()
            if kind != "ready":
                raise RuntimeError(f"parse process answered {kind!r} at start")
        except BaseException:
            child.kill()
            raise
        return child

    @property
    def alive(self) -> bool:
        return not self.retired and self.process.is_alive()

    def kill(self) -> None:
        self.retired = True
        with contextlib.suppress(OSError, ValueError):
            if self.process.is_alive():
                self.process.kill()
        with contextlib.suppress(OSError, ValueError):
            self.process.join(5)
        with contextlib.suppress(OSError):
            self.conn.close()

    def describe_exit(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "is unresponsive"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name}"
            return f"was killed by signal {-code}"
        return f"exited with status {code}"


class ParsePool:
    """``processes`` supervised parse processes; :meth:`run` one call in one of them."""

    def __init__(self, options: ParsePoolOptions) -> None:
        self.options = options
        self._idle: asyncio.Queue[_Process] = asyncio.Queue()
        self._processes: set[_Process] = set()
        self._starting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._threads = ThreadPoolExecutor(options.processes, thread_name_prefix="rag-parse-io")
        self.restarts = 0
        self.last_problem: str | None = None
        self._closed = False

    async def start(self) -> None:
        """Start every process and wait until they are warm; then watch them."""
        started = await asyncio.gather(
            *(
                asyncio.to_thread(_Process.start, self.options)
                for _ in range(self.options.processes)
            )
        )
        for process in started:
            self._processes.add(process)
            self._idle.put_nowait(process)
        self._spawn_task(self._monitor())

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for process in list(self._processes):
            await asyncio.to_thread(process.kill)
        self._processes.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def status(self) -> dict[str, Any]:
        """Readiness of the pool: ``ok`` only while every process is alive and warm."""
        alive = sum(1 for process in self._processes if process.alive)
        ok = alive >= self.options.processes
        status: dict[str, Any] = {
            "ok": ok,
            "processes": self.options.processes,
            "alive": alive,
            "restarts": self.restarts,
        }
        if not ok:
            status["problem"] = (
                f"{self.options.processes - alive} parse process(es) down, being replaced"
                + (f" ({self.last_problem})" if self.last_problem else "")
            )
        return status

    def pids(self) -> list[int]:
        return [p.process.pid for p in self._processes if p.alive and p.process.pid]

    async def run(
        self,
        func: Callable[..., Any],
        *args: Any,
        timeout: float,  # noqa: ASYNC109 - the deadline kills the process, not only the wait
        progress: Progress | None = None,
        describe: str = "the document",
    ) -> Any:
        """``func(*args, progress=...)`` in a parse process, within ``timeout`` seconds.

        Raises what ``func`` raised, or :class:`ParseDeadline`, :class:`ParseOutOfMemory`,
        :class:`ParseProcessDied`. ``describe`` names the work in messages.
        """
        process = await self._acquire()
        loop = asyncio.get_running_loop()
        reports: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        def exchange() -> tuple[str, Any]:
            process.conn.send((func, args))
            while True:
                kind, value = process.conn.recv()
                if kind != "progress":
                    return kind, value
                loop.call_soon_threadsafe(reports.put_nowait, value)

        async def forward() -> None:
            while True:
                values = await reports.get()
                if progress is not None:
                    await progress(*values)

        forwarder = asyncio.create_task(forward())
        started = time.monotonic()
        try:
            kind, value = await asyncio.wait_for(
                loop.run_in_executor(self._threads, exchange), timeout
            )
        except TimeoutError:
            self._replace(process, f"parsing {describe} ran past its {timeout:g} s deadline")
            raise ParseDeadline(
                f"parsing {describe} took longer than {timeout:g} s; it was stopped"
            ) from None
        except (EOFError, OSError, BrokenPipeError) as exc:
            await asyncio.to_thread(process.process.join, 5)
            how = process.describe_exit()
            self._replace(process, f"a parse process {how} while parsing {describe}")
            raise ParseProcessDied(
                f"the parse process {how} while parsing {describe} "
                "(out of memory?); it was replaced and the job will be retried"
            ) from exc
        except asyncio.CancelledError:  # the job was given up: its process may still run
            self._replace(process, f"parsing {describe} was cancelled")
            raise
        finally:
            forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forwarder
        log.debug("parsed %s in %.2f s", describe, time.monotonic() - started)
        if kind == "memory":
            self._replace(process, f"parsing {describe} ran out of memory")
            raise ParseOutOfMemory(f"parsing {describe} needed more memory than the limit")
        self._idle.put_nowait(process)
        if kind == "error":
            raise value
        return value

    # --- supervision --------------------------------------------------------------------------

    async def _acquire(self) -> _Process:
        while True:
            process = await self._idle.get()
            if process.retired:
                continue
            if process.process.is_alive():
                return process
            self._replace(process, f"an idle parse process {process.describe_exit()}")

    def _replace(self, process: _Process, problem: str) -> None:
        """Retire ``process`` (killing it if it still runs) and start another in its place."""
        if process.retired and process not in self._processes:
            return
        log.warning("%s; starting a replacement", problem)
        self.last_problem = problem
        process.retired = True
        self._processes.discard(process)
        self.restarts += 1
        self._spawn_task(asyncio.to_thread(process.kill))
        if not self._closed:
            self._spawn_task(self._start_replacement())

    async def _start_replacement(self) -> None:
        delay = 0.5
        while True:
            try:
                process = await asyncio.to_thread(_Process.start, self.options)
            except Exception as exc:
                log.error("cannot start a parse process: %s; again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF_MAX)
                continue
            if self._closed:
                await asyncio.to_thread(process.kill)
                return
            self._processes.add(process)
            self._idle.put_nowait(process)
            return

    async def _monitor(self) -> None:
        """Notice processes that die while idle, so that readiness shows them at once."""
        while True:
            await asyncio.sleep(MONITOR_INTERVAL)
            for process in list(self._processes):
                if not process.retired and not process.process.is_alive():
                    self._replace(process, f"an idle parse process {process.describe_exit()}")

    def _spawn_task(self, awaitable: Awaitable[Any]) -> None:
        async def wrapped() -> None:
            await awaitable

        task = asyncio.create_task(wrapped())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
