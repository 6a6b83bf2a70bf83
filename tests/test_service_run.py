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


def _children_need_their_key(base: str, admin: dict[str, str]) -> None:
    """Each child started with a generated --api-key, from its environment (not its command
    line, which any user can read): without it llama-server answers 401, except /health."""
    children = httpx.get(f"{base}/v1/runtime", headers=admin, timeout=5).json()["children"]
    for child in children:
        url = child["url"]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        for path in ("/slots", "/props", "/metrics"):
            assert httpx.get(url + path, timeout=5).status_code == 401, (child, path)
        wrong = {"authorization": "Bearer not-the-key"}
        assert httpx.get(f"{url}/slots", headers=wrong, timeout=5).status_code == 401
        route = "/completion" if child["role"] == "generation" else "/v1/embeddings"
        body = {"prompt": "hi", "n_predict": 1} if route == "/completion" else {"input": ["hi"]}
        assert httpx.post(url + route, json=body, timeout=30).status_code == 401
        cmdline = Path(f"/proc/{child['pid']}/cmdline").read_bytes()
        assert b"api-key" not in cmdline and b"api_key" not in cmdline
        environ = Path(f"/proc/{child['pid']}/environ").read_bytes().split(b"\0")
        assert any(entry.startswith(b"LLAMA_API_KEY=") for entry in environ)
        key = next(e for e in environ if e.startswith(b"LLAMA_API_KEY=")).split(b"=", 1)[1]
        assert len(key) >= 43  # secrets.token_urlsafe(32)
        assert key not in httpx.get(f"{base}/v1/runtime", headers=admin, timeout=5).content


def _serves_end_to_end(base: str, admin: dict[str, str]) -> None:
    """Ingestion (the embedding child), search (the query child) and an answer (the
    generation child) all go through children that want their key."""
    text = b"The lighthouse lamp is visible for twenty nautical miles on a clear night.\n"
    with httpx.Client(base_url=base, headers=admin, timeout=120) as http:
        upload = http.post(
            "/v1/documents",
            files={"file": ("lighthouse.txt", text, "text/plain")},
            data={"collection": "keyed"},
        )
        assert upload.status_code == 202, upload.text
        job_id = upload.json()["documents"][0]["job_id"]
        deadline = time.monotonic() + 120
        job = http.get(f"/v1/jobs/{job_id}").json()
        while job["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
            job = http.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded", job
        found = http.post("/v1/search", json={"query": "lighthouse lamp", "collection": "keyed"})
        assert found.status_code == 200, found.text
        assert found.json()["results"]
        answer = http.post(
            "/v1/answer", json={"question": "How far is the lamp visible?", "collection": "keyed"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] > 0


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
    _children_need_their_key(base, admin)
    _serves_end_to_end(base, admin)

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
