"""The supervised parse pool on its own: deadlines kill and replace a process, a memory limit
turns into an answer, a dead process is replaced, errors and progress cross the process
boundary, and the other calls go on."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bench.ocr.scan import image_only_pdf
from ingest.chunking import ChunkingOptions
from ingest.detect import PDF
from ingest.parsepool import (
    ParseDeadline,
    ParseOutOfMemory,
    ParsePool,
    ParsePoolOptions,
    ParseProcessDied,
)
from ingest.parsing import ParseError
from ingest.parsing.ocr import tesseract
from ingest.pipeline import parse_and_chunk
from tests.test_parsing import make_pdf


def pid(*, progress: Callable[..., None]) -> int:
    return os.getpid()


def sleep(seconds: float, *, progress: Callable[..., None]) -> None:
    time.sleep(seconds)


def allocate(megabytes: int, *, progress: Callable[..., None]) -> int:
    return len(bytearray(megabytes * 2**20))


def die(*, progress: Callable[..., None]) -> None:
    os._exit(3)


def fail(*, progress: Callable[..., None]) -> None:
    raise ParseError("corrupt", "broken on purpose")


def count(to: int, *, progress: Callable[..., None]) -> int:
    for number in range(1, to + 1):
        progress("step", number, to)
    return to


@pytest.fixture
async def pool() -> AsyncIterator[ParsePool]:
    pool = ParsePool(ParsePoolOptions(processes=1, memory_bytes=400 * 2**20))
    await pool.start()
    yield pool
    await pool.close()


async def ready(pool: ParsePool) -> None:
    deadline = time.monotonic() + 60
    while not pool.status()["ok"]:
        assert time.monotonic() < deadline, pool.status()
        await asyncio.sleep(0.05)


async def test_a_call_past_its_deadline_is_stopped_and_its_process_replaced(
    pool: ParsePool,
) -> None:
    first = await pool.run(pid, timeout=30)
    with pytest.raises(ParseDeadline):
        await pool.run(sleep, 60, timeout=0.5, describe="slow.pdf")
    assert not pool.status()["ok"]  # down until the replacement is warm
    await ready(pool)
    assert pool.status()["restarts"] == 1
    second = await pool.run(pid, timeout=30)
    assert second != first


async def test_memory_limit_and_death_are_answers_and_the_next_call_runs(pool: ParsePool) -> None:
    assert await pool.run(allocate, 10, timeout=30) == 10 * 2**20
    with pytest.raises(ParseOutOfMemory):
        await pool.run(allocate, 800, timeout=30)
    assert await pool.run(allocate, 10, timeout=30) == 10 * 2**20
    with pytest.raises(ParseProcessDied) as died:
        await pool.run(die, timeout=30, describe="crash.doc")
    assert "exited with status 3" in died.value.message and "crash.doc" in died.value.message
    with pytest.raises(ParseError) as failed:  # the parser's own errors pass through as they are
        await pool.run(fail, timeout=30)
    assert failed.value.reason == "corrupt"
    assert pool.status()["restarts"] == 2


async def test_progress_crosses_the_process_boundary(pool: ParsePool) -> None:
    heard: list[tuple[Any, ...]] = []

    async def progress(*values: Any) -> None:
        heard.append(values)

    assert await pool.run(count, 3, timeout=30, progress=progress) == 3
    assert heard == [("step", 1, 3), ("step", 2, 3), ("step", 3, 3)]


@pytest.mark.skipif(tesseract() is None, reason="Tesseract is not installed")
async def test_ocr_pages_are_the_progress_of_a_scanned_pdf(pool: ParsePool) -> None:
    heard: list[tuple[Any, ...]] = []

    async def progress(*values: Any) -> None:
        heard.append(values)

    scan = image_only_pdf(make_pdf(), dpi=200, pages=[2, 3])
    pages, chunks = await pool.run(
        parse_and_chunk, scan, PDF, "scan.pdf", ChunkingOptions(), timeout=120, progress=progress
    )
    assert pages == 3 and [chunk.page for chunk in chunks] == [1, 2, 3]
    assert heard == [("ocr", 1, 2), ("ocr", 2, 2)]
