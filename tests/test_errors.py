"""The single JSON error shape, request ids and status codes, through a real app."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from rag.core.errors import RagError, RateLimited, UpstreamUnavailable
from rag.web.errors import install_error_handlers
from rag.web.requestid import RequestIdMiddleware


class Body(BaseModel):
    question: str


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    @app.post("/echo")
    async def echo(body: Body) -> dict[str, str]:
        return {"question": body.question}

    @app.get("/down")
    async def down() -> None:
        raise UpstreamUnavailable("no generation server is reachable", retry_after=7)

    @app.get("/busy")
    async def busy() -> None:
        raise RateLimited("buffer full")

    @app.get("/secret")
    async def secret() -> None:
        raise RagError("password=hunter2 leaked")

    @app.get("/crash")
    async def crash() -> None:
        raise ZeroDivisionError("internal detail")

    return app


@pytest.fixture
async def client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def _shape(response: httpx.Response) -> dict[str, str]:
    error = response.json()["error"]
    assert set(error) >= {"type", "message", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


async def test_unknown_route_is_404_in_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert _shape(response)["type"] == "not_found"


async def test_validation_error_names_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", json={"question": 3})
    assert response.status_code == 422
    error = _shape(response)
    assert error["type"] == "validation_error"
    assert "question" in error["message"]


async def test_unavailable_sets_retry_after(client: httpx.AsyncClient) -> None:
    response = await client.get("/down")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert _shape(response)["type"] == "upstream_unavailable"


async def test_rate_limited_is_429_with_retry_after(client: httpx.AsyncClient) -> None:
    response = await client.get("/busy")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"


async def test_internal_messages_never_leak(client: httpx.AsyncClient) -> None:
    for path in ("/secret", "/crash"):
        response = await client.get(path)
        assert response.status_code == 500
        error = _shape(response)
        assert error == {**error, "type": "internal", "message": "internal error"}
        assert "hunter2" not in response.text and "internal detail" not in response.text


async def test_client_request_id_is_kept_and_bad_ones_replaced(client: httpx.AsyncClient) -> None:
    kept = await client.get("/nope", headers={"X-Request-ID": "abc-123"})
    assert kept.headers["x-request-id"] == "abc-123"
    replaced = await client.get("/nope", headers={"X-Request-ID": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert len(replaced.headers["x-request-id"]) == 32
