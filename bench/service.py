"""What the benchmarks that drive a running service share: uploading files into the collection
``bench``, waiting, with one document listing per poll, until they are searchable, and stopping
the service process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import httpx

PAGE = 500  # GET /v1/documents lists at most this many at once


async def upload(http: httpx.AsyncClient, files: list[Path]) -> list[str]:
    """Upload ``files`` one by one into ``bench``; their job ids."""
    jobs: list[str] = []
    for path in files:
        response = await http.post(
            "/v1/documents",
            data={"collection": "bench"},
            files={"file": (path.name, path.read_bytes())},
        )
        response.raise_for_status()
        jobs.extend(d["job_id"] for d in response.json()["documents"])
    return jobs


async def wait_ready(http: httpx.AsyncClient, expected: int, interval: float = 0.5) -> int:
    """Poll one listing (as a dashboard would, not one request per job, which would load the
    service measured) until ``expected`` documents are ready; their chunks."""
    if expected > PAGE:
        raise ValueError(f"one listing shows at most {PAGE} documents; {expected} asked for")
    while True:
        listing = await http.get("/v1/documents", params={"collection": "bench", "limit": PAGE})
        listing.raise_for_status()
        documents = listing.json()["documents"]
        failed = [d for d in documents if d["status"] == "failed"]
        if failed:
            raise RuntimeError(f"{failed[0]['filename']} failed: {failed[0]['error']}")
        if len(documents) >= expected and all(d["status"] == "ready" for d in documents):
            return sum(d["chunks"] for d in documents)
        await asyncio.sleep(interval)


def stop_service(process: subprocess.Popen[bytes]) -> None:
    """Stop a ``rag run`` process as an operator would (SIGTERM), killing it after a minute."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
