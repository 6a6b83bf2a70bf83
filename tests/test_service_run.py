"""`rag run` as a user runs it: a real process with real llama-server children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag.core.runtime.prepare import PreparedRuntime
from rag.core.runtime.supervisor import free_port
from tests.conftest import running, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def service(
    tmp_path: Path, runtime: PreparedRuntime
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {
        **os.environ,
        "RAG_PORT": str(port),
        "RAG_DATA_DIR": str(tmp_path / "data"),
        "RAG_GENERATION_SERVERS": "1",
        "RAG_LOG_LEVEL": "warning",
    }
    with (tmp_path / "service.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "rag", "run"], env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    yield process, f"http://127.0.0.1:{port}"
    if process.poll() is None:
        process.kill()
        process.wait(30)


def _wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited during start-up"
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"/readyz not 200 within {timeout} s")


def _admin(tmp_path: Path) -> dict[str, str]:
    """The admin key the first start generated (no RAG_ADMIN_KEY), as a header."""
    key_file = tmp_path / "data" / "admin.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    return {"authorization": f"Bearer {key_file.read_text().strip()}"}


def _child_pids(base: str, headers: dict[str, str]) -> list[int]:
    children = httpx.get(f"{base}/v1/runtime", headers=headers, timeout=5).json()["children"]
    assert {child["role"] for child in children} == {"embedding", "embedding-query", "generation"}
    return [int(child["pid"]) for child in children]


def test_run_becomes_ready_serves_metrics_and_stops_cleanly(
    service: tuple[subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    process, base = service
    _wait_ready(base, process, timeout=120)
    assert httpx.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz", timeout=5).json()
    assert ready["checks"]["embedding_query_pool"]["ok"]  # the query lane's child counts too
    assert httpx.get(f"{base}/v1/runtime", timeout=5).status_code == 401  # keys by default
    admin = _admin(tmp_path)
    pool = httpx.get(f"{base}/v1/pool", headers=admin, timeout=5).json()
    assert pool["embedding_query"]["upstreams"]
    metrics = httpx.get(f"{base}/metrics", headers=admin, timeout=5)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'rag_llama_child_up{name="embedding",role="embedding"} 1.0' in metrics.text
    pids = _child_pids(base, admin)
    assert all(running(pid) for pid in pids)

    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal to exit with its usual status
    assert process.wait(60) in (0, -signal.SIGTERM)
    assert wait_gone(pids, 10) == []
    log = (tmp_path / "service.log").read_text()
    assert "Traceback" not in log, log


def test_children_die_with_a_killed_service(
    service: tuple[subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    process, base = service
    _wait_ready(base, process, timeout=120)
    pids = _child_pids(base, _admin(tmp_path))
    process.kill()
    process.wait(30)
    assert wait_gone(pids, 15) == [], "llama-server children outlived a SIGKILLed service"
