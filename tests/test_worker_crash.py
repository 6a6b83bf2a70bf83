"""A `rag worker` process SIGKILLed in the middle of a job loses nothing: after its lease
expires another worker process claims the job, finishes it, and no point is duplicated."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ingest.blobs import BlobStore
from ingest.registry import Registry
from rag.core.runtime.paths import EMBEDDING_DIMENSIONS
from rag.core.vectorstore import VectorStore
from tests.conftest import RunningServer, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORDS = [
    "river",
    "stone",
    "lantern",
    "orchard",
    "copper",
    "meadow",
    "harbor",
    "violet",
    "thunder",
    "saddle",
]


def _long_text(paragraphs: int) -> bytes:
    lines = []
    for index in range(paragraphs):
        words = [WORDS[(index * 7 + k * 3) % len(WORDS)] for k in range(60)]
        lines.append(f"Paragraph {index}: " + " ".join(words) + ".")
    return "\n\n".join(lines).encode()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and "spawn_main" in Path(stat.parent, "cmdline").read_text():
            found.append(int(stat.parent.name))
    return found


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "rag", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=handle,
        )


async def test_killed_worker_loses_nothing(embedding_server: RunningServer, tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    env = {
        **os.environ,
        "RAG_DATA_DIR": str(tmp_path),
        "RAG_DATABASE_URL": database,
        "RAG_EMBEDDING_URLS": json.dumps(embedding_server.urls),
        "RAG_JOB_LEASE_SECONDS": "2",
        "RAG_WORKERS": "1",
        "RAG_EMBEDDING_BATCH_SIZE": "4",
        "RAG_EMBEDDING_CONCURRENCY": "1",
        "RAG_POOL_POLL_INTERVAL": "0.2",
        "RAG_LOG_LEVEL": "info",
    }
    registry = await Registry.connect(database)
    try:
        data = _long_text(150)
        sha256, size, _ = await BlobStore(tmp_path / "blobs").write_stream(_once(data), 1 << 24)
        document, job, created = await registry.add_document(
            collection="crash", filename="long.txt", content_type="text/plain",
            sha256=sha256, size=size, metadata={}, max_attempts=5,
        )  # fmt: skip
        assert created and job is not None

        first = _worker(env, tmp_path / "worker-1.log")
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                current = await registry.get_job(job.id)
                assert current is not None
                if current.stage == "embedding" and current.progress_done > 0:
                    break
                assert first.poll() is None, (tmp_path / "worker-1.log").read_text()
                await asyncio.sleep(0.05)
            else:
                log = (tmp_path / "worker-1.log").read_text()
                pytest.fail(f"the first worker never started embedding: {current}\n{log}")
            orphans = _children_of(first.pid)  # its parsing process, started by now
            assert orphans, "the worker has no parsing process"
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            assert wait_gone(orphans, 10) == [], "the worker's parsing process outlived it"
        finally:
            if first.poll() is None:
                first.kill()
        killed = await registry.get_job(job.id)
        assert killed is not None and killed.state == "running"
        assert killed.progress_done < killed.progress_total, "killed too late to prove anything"

        second = _worker(env, tmp_path / "worker-2.log")
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                finished = await registry.get_job(job.id)
                assert finished is not None
                if finished.state in ("succeeded", "failed"):
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail("the job did not finish after the lease expired")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        assert finished.state == "succeeded", finished.error
        assert finished.attempts == 2
        final = await registry.get_document(document.id)
        assert final is not None and final.status == "ready" and final.chunks
    finally:
        await registry.close()

    store = VectorStore.open(  # the workers' embedded store (RAG_VECTOR_STORE=auto)
        url=None, path=str(tmp_path / "edge"), timeout=10, dimensions=EMBEDDING_DIMENSIONS,
        backend="edge",
    )  # fmt: skip
    try:
        assert await store.count("crash", document.id) == final.chunks
        assert await store.count("crash") == final.chunks  # nothing duplicated or left over
    finally:
        await store.close()
