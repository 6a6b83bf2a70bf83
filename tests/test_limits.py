"""Limits on every input of the service, each a 4xx with the error shape (never a 500): body
size on every route (uploads keep their own limit), a body that stops arriving, request head
size, JSON nesting, filter lists, upload metadata size and nesting. No llama-server: every
request here is refused before a model would be needed."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from rag.api.app import create_app
from rag.core.runtime.supervisor import free_port
from rag.core.settings import Settings
from rag.web.server import server_options
from tests.conftest import wait_for

pytestmark = pytest.mark.integration
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
async def base(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    settings = base_settings.model_copy(
        update={
            "data_dir": tmp_path_factory.mktemp("limits"),
            "max_body_bytes": LIMIT,
            "max_header_bytes": 16 * 1024,
            "body_read_timeout": 0.5,
            "body_min_rate": 1000.0,
            "max_upload_bytes": 4 * LIMIT,
        }
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **server_options(settings.max_header_bytes, settings.header_read_timeout),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    assert await wait_for(lambda: server.started, within=60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def assert_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and error["message"] and error["request_id"]
    return error  # type: ignore[no-any-return]


ROUTES = [
    ("POST", "/v1/search"),
    ("POST", "/v1/answer"),
    ("POST", "/v1/keys"),
    ("GET", "/v1/documents"),
    ("DELETE", "/v1/documents/abc"),
    ("POST", "/v1/jobs/abc/retry"),
    ("GET", "/healthz"),
]


async def test_a_body_over_the_limit_is_413_on_every_route(base: str) -> None:
    big = b'{"query": "' + b"a" * (LIMIT + 10) + b'"}'
    async with httpx.AsyncClient(timeout=30) as http:
        for method, path in ROUTES:
            response = await http.request(
                method, base + path, content=big, headers={"content-type": "application/json"}
            )
            assert_error(response, 413, "payload_too_large")


async def test_a_chunked_body_over_the_limit_is_413(base: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"query": "'
        for _ in range(LIMIT // 1024 + 2):
            yield b"a" * 1024
        yield b'"}'

    async with httpx.AsyncClient(timeout=30) as http:
        for path in ["/v1/search", "/v1/keys"]:
            response = await http.post(
                base + path, content=chunks(), headers={"content-type": "application/json"}
            )
            assert "content-length" not in response.request.headers
            assert_error(response, 413, "payload_too_large")


async def test_a_body_that_stops_arriving_is_408(base: str) -> None:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/search HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n" + b'{"query": "slow'
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)  # then nothing more
        assert head.startswith(b"HTTP/1.1 408"), head
    finally:
        writer.close()


async def test_a_body_that_trickles_in_is_408(base: str) -> None:
    """A byte every 0.2 s never leaves a gap of 0.5 s, but stays far below 1000 bytes/s."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = asyncio.get_running_loop().time()
    try:
        writer.write(
            b"POST /v1/search HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n{"
        )
        await writer.drain()

        async def trickle() -> None:
            for _ in range(100):
                await asyncio.sleep(0.2)
                writer.write(b" ")
                await writer.drain()

        sending = asyncio.create_task(trickle())
        try:
            answer = await asyncio.wait_for(reader.read(65536), 15)
        finally:
            sending.cancel()
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"slower than 1000 bytes/s" in answer
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        writer.close()


async def test_a_huge_request_head_is_refused_and_the_service_goes_on(base: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        try:
            response = await http.get(f"{base}/healthz", headers={"x-big": "a" * 256 * 1024})
        except httpx.HTTPError:
            pass  # h11 refused the head and uvicorn closed the connection
        else:
            assert 400 <= response.status_code < 500
        assert (await http.get(f"{base}/healthz")).status_code == 200


async def test_deeply_nested_json_is_a_4xx(base: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for body in [b"[" * 50_000, b'{"query": "x", "filter": ' + b"[" * 30_000 + b"}"]:
            response = await http.post(
                f"{base}/v1/search", content=body, headers={"content-type": "application/json"}
            )
            assert 400 <= response.status_code < 500, response.text
            assert response.json()["error"]["request_id"]


async def test_filter_lists_are_bounded(base: str) -> None:
    ids = [f"doc-{n}" for n in range(20_000)]
    async with httpx.AsyncClient(timeout=30) as http:
        for flt in [
            {"document_id": ids},
            {"filename": ids[:101]},
            {"metadata": {f"k{n}": n for n in range(33)}},
        ]:
            response = await http.post(f"{base}/v1/search", json={"query": "x", "filter": flt})
            assert response.status_code in (413, 422), response.text
            assert response.json()["error"]["type"] in ("payload_too_large", "validation_error")
        response = await http.post(
            f"{base}/v1/search", json={"query": "x", "filter": {"filename": ids[:101]}}
        )
        assert_error(response, 422, "validation_error")


async def upload(http: httpx.AsyncClient, base: str, data: bytes, **fields: str) -> httpx.Response:
    return await http.post(
        f"{base}/v1/documents",
        data={"collection": "limits", **fields},
        files={"file": ("notes.txt", io.BytesIO(data))},
    )


async def test_upload_metadata_is_bounded_in_size_and_depth(base: str) -> None:
    text = b"The tide tables are kept in the red archive.\n"
    async with httpx.AsyncClient(timeout=30) as http:
        large = json.dumps({"note": "x" * 5000})
        error = assert_error(await upload(http, base, text, metadata=large), 400, "invalid_request")
        assert error["reason"] == "metadata_too_large"
        deep = '{"a": ' * 400 + "1" + "}" * 400
        error = assert_error(await upload(http, base, text, metadata=deep), 400, "invalid_request")
        assert error["reason"] == "metadata_too_deep"
        deeper = "[" * 2000 + "]" * 2000  # past the JSON parser's own recursion limit
        assert_error(await upload(http, base, text, metadata=deeper), 400, "invalid_request")
        fine = json.dumps({"team": "a", "tags": ["x", "y"], "nested": {"k": 1}})
        assert (await upload(http, base, text, metadata=fine)).status_code == 202


async def test_uploads_keep_their_own_limit(base: str, tmp_path: Path) -> None:
    lines = b"".join(b"line %d of a text file that is longer than a JSON body\n" % n
                     for n in range(3000))  # fmt: skip
    assert LIMIT < len(lines) < 4 * LIMIT
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await upload(http, base, lines)).status_code == 202
        too_big = lines * 3
        assert_error(await upload(http, base, too_big), 413, "payload_too_large")
