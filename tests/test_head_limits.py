"""Request heads are bounded in size and in time on both apps, run as real processes (``rag
serve`` on uvicorn's h11 parser, ``python -m rag.balancer`` on httptools): a 64 MiB header is a
431 within a moment and the process does not grow; a head that trickles in, or a connection that
sends nothing, is cut off after the head timeout; a body that stops arriving is a 408 (the
service's is in tests/test_limits.py). No llama-server: nothing here gets past the HTTP server."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rag.core.runtime.supervisor import free_port

pytestmark = pytest.mark.integration

HEAD_TIMEOUT = 1.0
MiB = 1 << 20


@dataclass
class App:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    probe: str  # a path that answers 200 without an upstream


def _wait_listening(app: App, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if app.process.poll() is not None:
            pytest.fail(f"{app.name} exited with {app.process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{app.port}{app.probe}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{app.name} did not answer within {within} s")


@pytest.fixture(scope="module", params=["service", "balancer"])
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    port, dead = free_port(), free_port()
    if request.param == "service":
        command = [sys.executable, "-m", "rag", "serve"]
        env = {
            "RAG_PORT": str(port),
            "RAG_AUTH": "open",
            "RAG_DATA_DIR": str(tmp_path_factory.mktemp("heads")),
            "RAG_EMBEDDING_URLS": json.dumps([f"http://127.0.0.1:{dead}"]),
            "RAG_GENERATION_URLS": json.dumps([f"http://127.0.0.1:{dead}"]),
            "RAG_HEADER_READ_TIMEOUT": str(HEAD_TIMEOUT),
            "RAG_LOG_LEVEL": "warning",
        }
        probe = "/healthz"
    else:
        command = [sys.executable, "-m", "rag.balancer", "--port", str(port)]
        env = {
            "RAG_BALANCER_HEADER_READ_TIMEOUT": str(HEAD_TIMEOUT),
            "RAG_BALANCER_READ_TIMEOUT": "1",  # also the gap a request body may leave
            "RAG_BALANCER_LOG_LEVEL": "warning",
        }
        probe = "/v1/pool"
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    running = App(request.param, process, port, probe)
    try:
        _wait_listening(running)
        yield running
    finally:
        process.terminate()
        process.wait(30)


def _rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def _send_and_read(port: int, head: bytes, blocks: int) -> tuple[bytes, float]:
    """Send ``head`` then ``blocks`` MiB of header value, reading meanwhile; return what came
    back and the seconds until its first byte."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    answer: list[bytes] = []
    first: list[float] = []
    started = time.monotonic()

    def read() -> None:
        data = b""
        try:
            while chunk := sock.recv(65536):
                if not data:
                    first.append(time.monotonic() - started)
                data += chunk
        except OSError:
            pass
        answer.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        sock.sendall(head)
        block = b"a" * MiB
        for _ in range(blocks):
            sock.sendall(block)
        sock.sendall(b"\r\n\r\n")
    except OSError:
        pass  # the server answered and closed: what it said is read
    reader.join(30)
    sock.close()
    return answer[0], first[0] if first else float("inf")


def test_a_64_mib_header_is_431_at_once_and_the_process_stays_small(app: App) -> None:
    pid = app.process.pid
    before = _rss(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
    answer, seconds = _send_and_read(
        app.port, b"GET " + app.probe.encode() + b" HTTP/1.1\r\nhost: x\r\nx-big: ", 64
    )
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["type"] == "header_too_large" and error["request_id"]
    assert seconds < 2.0
    peak = _rss(pid, "VmHWM")
    assert peak - before < 16 * MiB, (before, peak)
    # and the next client is served as usual
    assert httpx.get(f"http://127.0.0.1:{app.port}{app.probe}", timeout=5).status_code == 200


def test_a_head_within_the_limit_is_served(app: App) -> None:
    headers = {"x-fine": "a" * 32 * 1024}  # half the default 64 KiB
    response = httpx.get(f"http://127.0.0.1:{app.port}{app.probe}", headers=headers, timeout=5)
    assert response.status_code == 200


def test_a_kept_alive_connection_serves_more_than_the_head_limit_in_all(app: App) -> None:
    """The limit is per request head: 1,000 requests on one connection (~100 KiB of heads, more
    than the 64 KiB limit) are all answered. llhttp ends a head and its message within one
    read, and the bytes used to add up across requests: the 460th or so was a 431."""
    with httpx.Client(base_url=f"http://127.0.0.1:{app.port}", timeout=5) as client:
        statuses = {client.get(app.probe, headers={"x-pad": "p" * 40}).status_code
                    for _ in range(1000)}  # fmt: skip
    assert statuses == {200}


def _recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_head_that_trickles_in_is_cut_off(app: App) -> None:
    sock = socket.create_connection(("127.0.0.1", app.port))
    sock.settimeout(10)
    started = time.monotonic()
    answer = b""
    try:
        sock.sendall(b"GET " + app.probe.encode() + b" HTTP/1.1\r\nhost: x\r\n")
        for n in range(40):  # a header line every 0.2 s: the head never ends on its own
            time.sleep(0.2)
            sock.sendall(b"x-slow-%d: a\r\n" % n)
    except OSError:
        pass  # cut off while still sending
    with contextlib.suppress(OSError):
        answer = _recv_all(sock)
    sock.close()
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["type"] == "request_timeout"
    assert elapsed < HEAD_TIMEOUT + 4.0 + 2.0  # the timeout, the linger, some slack


def test_a_connection_that_sends_nothing_is_closed(app: App) -> None:
    sock = socket.create_connection(("127.0.0.1", app.port))
    sock.settimeout(10)
    started = time.monotonic()
    assert _recv_all(sock) == b""  # closed without an answer: nothing was asked
    assert time.monotonic() - started < HEAD_TIMEOUT + 2.0
    sock.close()


def test_a_body_that_stops_arriving_is_408(app: App) -> None:
    if app.name == "service":
        pytest.skip("the service's body timeout: tests/test_limits.py")
    sock = socket.create_connection(("127.0.0.1", app.port))
    sock.settimeout(10)
    sock.sendall(
        b"POST /completion HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 100\r\n\r\n" + b'{"prompt": "slow'
    )
    head = sock.recv(65536)  # then nothing more
    sock.close()
    assert head.startswith(b"HTTP/1.1 408"), head
