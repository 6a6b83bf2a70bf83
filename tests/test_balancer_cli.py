"""``rag balancer`` takes its settings from the environment and its command line alike; an option
overrides its variable only when it is given (the CLI used to pass its defaults as overrides, so
``RAG_BALANCER_PORT`` was ignored). Run as a real process, asked over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from rag.balancer import balancer_settings
from rag.core.runtime.supervisor import free_port


def test_options_override_only_when_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_BALANCER_PORT", "9999")
    monkeypatch.setenv("RAG_BALANCER_POLICY", "least-requests")
    monkeypatch.setenv("RAG_BALANCER_BUFFER_SIZE", "7")
    from_env = balancer_settings(host=None, port=None, policy=None, upstreams=None)
    assert (from_env.port, from_env.pool.policy, from_env.pool.buffer_size) == (
        9999, "least-requests", 7,
    )  # fmt: skip
    given = balancer_settings(port=8123, policy="round-robin")
    assert (given.port, given.pool.policy) == (8123, "round-robin")
    assert given.pool.buffer_size == 7  # the rest of the pool's settings still come from env


@contextmanager
def balancer(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "rag", "balancer", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()


def pool_status(port: int, process: subprocess.Popen[bytes], within: float = 60.0) -> Any:
    """``GET /v1/pool`` of the balancer on ``port`` once it answers (it must start there)."""
    with httpx.Client(timeout=2.0) as http:
        for _ in range(int(within / 0.1)):
            if process.poll() is not None:
                stderr = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"rag balancer exited with {process.returncode}: {stderr[-2000:]}")
            try:
                return http.get(f"http://127.0.0.1:{port}/v1/pool").json()
            except httpx.TransportError:
                time.sleep(0.1)  # not listening yet: ask again
    pytest.fail(f"rag balancer did not listen on port {port} within {within} s")


def test_the_process_listens_where_the_environment_says_and_the_options_win() -> None:
    env_port, option_port = free_port(), free_port()
    env = {
        "RAG_BALANCER_PORT": str(env_port),
        "RAG_BALANCER_POLICY": "least-requests",
        "RAG_BALANCER_BUFFER_SIZE": "7",
    }
    with balancer([], env) as process:
        status = pool_status(env_port, process)
        assert status["policy"] == "least-requests"
        assert status["buffer_size"] == 7
    with balancer(["--port", str(option_port), "--policy", "round-robin"], env) as process:
        status = pool_status(option_port, process)
        assert status["policy"] == "round-robin"
        assert status["buffer_size"] == 7


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_several_addresses_as_llama_server_takes_them() -> None:
    """``--host 127.0.0.1,::1``: the balancer answers on both, on the one port."""
    port = free_port()
    with balancer(["--host", "127.0.0.1,::1", "--port", str(port)], {}) as process:
        pool_status(port, process)  # listening on IPv4
        v4 = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5.0)
        v6 = httpx.get(f"http://[::1]:{port}/health", timeout=5.0)
        assert v6.status_code == v4.status_code  # no upstream yet: 503 on both
        assert v6.json()["error"]["type"] == v4.json()["error"]["type"]


def test_metrics_switched_off_answer_501() -> None:
    port = free_port()
    with balancer(["--port", str(port)], {"RAG_BALANCER_METRICS": "false"}) as process:
        pool_status(port, process)
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
        assert answer.status_code == 501
        assert answer.json()["error"]["type"] == "not_supported"
