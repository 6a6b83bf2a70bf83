"""The ingestion side of bench.search: uploads and the wait until they are searchable, also as
a function run in a process of its own (so that its work never delays reading search answers)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

PAGE = 500  # GET /v1/documents lists at most this many at once
TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=60.0, pool=60.0)


async def upload(http: httpx.AsyncClient, files: list[Path]) -> None:
    for path in files:
        response = await http.post(
            "/v1/documents",
            data={"collection": "bench"},
            files={"file": (path.name, path.read_bytes())},
        )
        response.raise_for_status()


async def wait_ready(http: httpx.AsyncClient, expected: int) -> int:
    """Poll one listing until ``expected`` documents are ready; their chunks."""
    while True:
        listing = await http.get("/v1/documents", params={"collection": "bench", "limit": PAGE})
        listing.raise_for_status()
        documents = listing.json()["documents"]
        failed = [d for d in documents if d["status"] == "failed"]
        if failed:
            raise RuntimeError(f"{failed[0]['filename']} failed: {failed[0]['error']}")
        if len(documents) >= expected and all(d["status"] == "ready" for d in documents):
            return sum(d["chunks"] for d in documents)
        await asyncio.sleep(0.5)


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
