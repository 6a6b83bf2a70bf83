"""The balancer protected (issue 14): the review's attacks repeated and refused. Membership,
pool status and metrics need the admin key; proxied routes need a client key once keys are
set; clients' credentials and cookies never reach an upstream, which gets its own key; upstream
URLs are a scheme, a host and a port, from an allow-list when one is set, and capped in number.
The upstream is a stand-in at the HTTP boundary: the "stranger's server" of the review, which
records what it is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from rag.balancer import balancer_settings, create_balancer_app
from tests.conftest import serve_app, wait_for

pytestmark = pytest.mark.integration

ADMIN = "balancer-admin-key-0123456789abcdef"
CLIENT = "balancer-client-key-0123456789abcdef"
UPSTREAM = "upstream-own-key-0123456789abcdef"


def recording_upstream(seen: list[dict[str, str]]) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/slots")
    async def slots() -> list[dict[str, Any]]:
        return [{"id": n, "is_processing": False} for n in range(64)]

    @app.get("/props")
    async def props() -> dict[str, Any]:
        return {"default_generation_settings": {"n_ctx": 2048}, "total_slots": 64}

    @app.post("/completion")
    async def completion(request: Request) -> dict[str, Any]:
        seen.append(dict(request.headers))
        return {"content": "ok", "stop": True}

    @app.options("/completion")
    async def preflight(request: Request) -> Response:  # as llama-server answers one
        origin = request.headers.get("origin", "")
        return Response(headers={"access-control-allow-origin": origin})

    return app


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[str, str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    async with serve_app(recording_upstream(seen)) as upstream:
        settings = balancer_settings(
            upstreams=[upstream],
            poll_interval=0.2,
            admin_key=ADMIN,
            api_keys=[CLIENT],
            upstream_api_key=UPSTREAM,
            max_upstreams=3,
            allowed_hosts=["127.0.0.1"],
        )
        async with serve_app(create_balancer_app(settings)) as url:
            async with httpx.AsyncClient(timeout=10) as http:
                assert await wait_for(lambda: _healthy(http, url), within=30), (
                    "the upstream did not become healthy"
                )
            yield url, upstream, seen


async def _healthy(http: httpx.AsyncClient, url: str) -> bool:
    return (await http.get(f"{url}/health")).status_code == 200


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_admin_routes_need_the_admin_key(
    guarded: tuple[str, str, list[dict[str, str]]],
) -> None:
    url, upstream, _ = guarded
    async with httpx.AsyncClient(timeout=10) as http:
        for headers in [{}, bearer(CLIENT), bearer("wrong")]:
            for method, path, kwargs in [
                ("GET", "/v1/pool", {}),
                ("GET", "/metrics", {}),
                ("POST", "/v1/pool/upstreams", {"json": {"url": "http://127.0.0.1:9"}}),
                ("DELETE", "/v1/pool/upstreams", {"params": {"url": upstream}}),
            ]:
                response = await http.request(method, url + path, headers=headers, **kwargs)
                assert response.status_code == 401, (method, path, response.text)
                assert response.json()["error"]["type"] == "unauthorized"
        pool = (await http.get(f"{url}/v1/pool", headers=bearer(ADMIN))).json()
        assert [u["url"] for u in pool["upstreams"]] == [upstream]  # nothing added or removed
        assert (await http.get(f"{url}/metrics", headers=bearer(ADMIN))).status_code == 200
        assert (await http.get(f"{url}/health")).status_code == 200  # probes stay open


async def test_clients_need_a_key_and_their_credentials_stay_with_the_balancer(
    guarded: tuple[str, str, list[dict[str, str]]],
) -> None:
    url, _, seen = guarded
    body = {"prompt": "Hi", "n_predict": 2}
    async with httpx.AsyncClient(timeout=10) as http:
        refused = await http.post(f"{url}/completion", json=body)
        assert refused.status_code == 401 and not seen
        wrong = await http.post(f"{url}/completion", json=body, headers=bearer("nope"))
        assert wrong.status_code == 401 and not seen
        for answer in (refused, wrong):  # as llama-server with --api-key words it
            error = answer.json()["error"]
            assert error["type"] == "authentication_error" and error["code"] == 401
            assert error["request_id"]
        # a CORS preflight carries no credentials, and llama-server answers it without a key
        preflight = await http.options(
            f"{url}/completion",
            headers={"origin": "web.example", "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == "web.example"
        cookies = {"cookie": "session=client-secret"}
        for headers in [bearer(CLIENT), {"x-api-key": CLIENT}]:
            answered = await http.post(
                f"{url}/completion", json=body, headers={**headers, **cookies}
            )
            assert answered.status_code == 200, answered.text
    assert len(seen) == 2
    for headers in seen:
        assert headers["authorization"] == f"Bearer {UPSTREAM}"  # its own key, not the client's
        assert "cookie" not in headers and "x-api-key" not in headers
        assert CLIENT not in str(headers)


@pytest.mark.parametrize(
    "bad",
    [
        "http://user:password@127.0.0.1:8081",
        "http://127.0.0.1:8081/internal/admin?x=/health",
        "http://127.0.0.1:8081/v1",
        "http://127.0.0.1:8081?x=1",
        "ftp://127.0.0.1:8081",
        "http://10.9.9.9:8081",  # not in the allow-list
        "not a url",
    ],
)
async def test_upstream_urls_are_scheme_host_and_port_only(
    guarded: tuple[str, str, list[dict[str, str]]], bad: str
) -> None:
    url, upstream, _ = guarded
    async with httpx.AsyncClient(timeout=10, headers=bearer(ADMIN)) as http:
        response = await http.post(f"{url}/v1/pool/upstreams", json={"url": bad})
        assert 400 <= response.status_code < 500, response.text
        pool = (await http.get(f"{url}/v1/pool")).json()
    assert [u["url"] for u in pool["upstreams"]] == [upstream]
    assert "password" not in str(pool)


async def test_the_number_of_upstreams_is_capped(
    guarded: tuple[str, str, list[dict[str, str]]],
) -> None:
    url, _, _ = guarded
    async with httpx.AsyncClient(timeout=10, headers=bearer(ADMIN)) as http:
        for port in (9, 10):
            added = await http.post(
                f"{url}/v1/pool/upstreams", json={"url": f"http://127.0.0.1:{port}"}
            )
            assert added.status_code == 201, added.text
        refused = await http.post(f"{url}/v1/pool/upstreams", json={"url": "http://127.0.0.1:11"})
        assert refused.status_code == 409
        assert refused.json()["error"]["type"] == "conflict"
        assert len((await http.get(f"{url}/v1/pool")).json()["upstreams"]) == 3


async def test_a_body_over_the_limit_is_413_and_never_reaches_an_upstream() -> None:
    seen: list[dict[str, str]] = []
    async with serve_app(recording_upstream(seen)) as upstream:
        settings = balancer_settings(upstreams=[upstream], poll_interval=0.2, max_body_bytes=4096)
        async with (
            serve_app(create_balancer_app(settings)) as url,
            httpx.AsyncClient(timeout=10) as http,
        ):
            assert await wait_for(lambda: _healthy(http, url), within=30)

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(8):
                    yield b" " * 1024

            big = {"prompt": "x" * 10_000, "n_predict": 1}
            for response in [
                await http.post(f"{url}/completion", json=big),
                await http.post(f"{url}/completion", content=chunks()),
            ]:
                assert response.status_code == 413, response.text
                assert response.json()["error"]["type"] == "payload_too_large"
            small = await http.post(f"{url}/completion", json={"prompt": "x", "n_predict": 1})
            assert small.status_code == 200
    assert len(seen) == 1
