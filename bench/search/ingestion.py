"""The ingestion side of bench.search: uploads and the wait until they are searchable, also as
a function run in a process of its own (so that its work never delays reading search answers)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from bench.service import upload, wait_ready

TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=60.0, pool=60.0)


def drive_ingestion(base: str, files: list[Path], expected: int) -> tuple[float, int]:
    """Upload ``files`` and wait until ``expected`` documents are ready (in a process of its own):
    the seconds it took and the chunks then searchable."""

    async def run() -> tuple[float, int]:
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
            started = time.perf_counter()
            await upload(http, files)
            chunks = await wait_ready(http, expected)
            return time.perf_counter() - started, chunks

    return asyncio.run(run())
