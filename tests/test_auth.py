"""API keys on the real service: every route refuses a request without a live key, scopes are
checked, a collection (and its documents and jobs) that a key may not use looks exactly like one
that does not exist, and a revoked key stops at once on every replica. Real embedding
llama-server, the embedded store, the registry on SQLite and on PostgreSQL."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ingest.registry.testing import scratch_database
from rag.api.app import create_app
from rag.core.settings import Settings
from tests.conftest import RunningServer, serve_app, service_settings, wait_job
from tests.test_registry import BACKENDS, database_url

pytestmark = pytest.mark.integration

ADMIN = "test-admin-key-0123456789abcdefghijklmnop"
PUBLIC = {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
TEXT_A = b"Team A keeps its lighthouse logbook in the blue cabinet.\n"
TEXT_B = b"Team B stores the harbour tide tables in the red archive.\n"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@dataclass
class Served:
    base: str
    http: httpx.AsyncClient  # sends the admin key
    settings: Settings
    routes: list[tuple[str, str]]
    doc_a: dict[str, Any]
    doc_b: dict[str, Any]

    async def key(self, scopes: list[str], collections: list[str]) -> str:
        body = {"name": "team", "scopes": scopes, "collections": collections}
        response = await self.http.post(f"{self.base}/v1/keys", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    async def upload(self, token: str, collection: str, data: bytes) -> httpx.Response:
        return await self.http.post(
            f"{self.base}/v1/documents",
            headers=bearer(token),
            data={"collection": collection},
            files={"file": ("notes.txt", io.BytesIO(data))},
        )


@pytest.fixture(scope="module", params=BACKENDS)
async def served(
    request: pytest.FixtureRequest,
    base_settings: Settings,
    embedding_server: RunningServer,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
) -> AsyncIterator[Served]:
    folder = tmp_path_factory.mktemp("auth")
    url = await database_url(request.param, folder, postgres_url)
    async with scratch_database(url) as db:
        settings = service_settings(
            base_settings,
            folder,
            embedding_server,
            auth="keys",
            admin_key=SecretStr(ADMIN),
            auth_cache_seconds=0.0,
            database_url=db.url,
            database_schema=db.schema,
        )
        app = create_app(settings, run_workers=True)
        routes = [
            (method, path)
            for path, item in app.openapi()["paths"].items()
            for method in item
            if path not in PUBLIC
        ]
        async with (
            serve_app(app) as base,
            httpx.AsyncClient(timeout=60, headers=bearer(ADMIN)) as http,
        ):
            docs = []
            for collection, data in [("team-a-docs", TEXT_A), ("team-b-docs", TEXT_B)]:
                response = await http.post(
                    f"{base}/v1/documents",
                    data={"collection": collection},
                    files={"file": ("notes.txt", io.BytesIO(data))},
                )
                assert response.status_code == 202, response.text
                (document,) = response.json()["documents"]
                assert (await wait_job(http, base, document["job_id"]))["state"] == "succeeded"
                docs.append(document)
            yield Served(base, http, settings, routes, docs[0], docs[1])


def assert_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and error["message"] and error["request_id"]
    return error  # type: ignore[no-any-return]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "0123456789abcdef0123456789abcdef", path)


async def test_every_route_refuses_a_missing_or_invalid_key(served: Served) -> None:
    assert len(served.routes) >= 12  # documents, jobs, search, answer, keys, operations
    async with httpx.AsyncClient(timeout=30) as anonymous:
        for method, path in served.routes:
            for headers in [{}, bearer("rag_not-a-key"), {"authorization": f"Basic {ADMIN}"}]:
                response = await anonymous.request(
                    method.upper(), served.base + concrete(path), headers=headers, json={}
                )
                assert_error(response, 401, "unauthorized")
                assert response.headers["www-authenticate"] == "Bearer"
        for path in ["/healthz", "/readyz", "/openapi.json"]:  # probes and the schema stay open
            assert (await anonymous.get(served.base + path)).status_code in (200, 503)


async def test_scopes(served: Served) -> None:
    reader = await served.key(["read"], ["*"])
    writer = await served.key(["write"], ["*"])
    base, http = served.base, served.http
    assert_error(await served.upload(reader, "team-a-docs", b"new text\n"), 403, "forbidden")
    doc = served.doc_a["id"]
    assert_error(await http.delete(f"{base}/v1/documents/{doc}", headers=bearer(reader)), 403,
                 "forbidden")  # fmt: skip
    search = {"query": "lighthouse", "collection": "team-a-docs"}
    assert (await http.post(f"{base}/v1/search", json=search, headers=bearer(reader))).is_success
    response = await http.post(f"{base}/v1/search", json=search, headers=bearer(writer))
    assert_error(response, 403, "forbidden")
    for path in ["/v1/keys", "/metrics", "/v1/runtime", "/v1/pool"]:
        for token in [reader, writer]:
            assert_error(await http.get(base + path, headers=bearer(token)), 403, "forbidden")
    assert (await http.get(f"{base}/metrics")).status_code == 200  # the admin key
    own = (await http.get(f"{base}/v1/keys/self", headers=bearer(reader))).json()
    assert own["scopes"] == ["read"] and "key" not in own
    # a key sees its own usage only: its one search
    usage = (await http.get(f"{base}/v1/usage", headers=bearer(reader))).json()["usage"]
    assert [(r["key_id"], r["collection"], r["requests"]) for r in usage] == [
        (own["id"], "team-a-docs", 1)
    ]


def same_error(refused: httpx.Response, missing: httpx.Response, name: str, other: str) -> None:
    """Refused and missing answers are alike but for the name asked about."""
    assert refused.status_code == missing.status_code == 404
    one, two = refused.json()["error"], missing.json()["error"]
    one.pop("request_id"), two.pop("request_id")
    assert one == {k: v.replace(other, name) if isinstance(v, str) else v for k, v in two.items()}


async def test_other_collections_look_like_none_at_all(served: Served) -> None:
    team_a = await served.key(["read", "write"], ["team-a-*"])
    base, http, head = served.base, served.http, bearer(team_a)
    b_id, b_job = served.doc_b["id"], served.doc_b["job_id"]
    nowhere = "f" * 32
    for method, path in [
        ("GET", "/v1/documents/{}"),
        ("DELETE", "/v1/documents/{}"),
        ("POST", "/v1/documents/{}/retry"),
    ]:
        refused = await http.request(method, base + path.format(b_id), headers=head)
        missing = await http.request(method, base + path.format(nowhere), headers=head)
        same_error(refused, missing, b_id, nowhere)
    for method, path in [("GET", "/v1/jobs/{}"), ("POST", "/v1/jobs/{}/retry")]:
        refused = await http.request(method, base + path.format(b_job), headers=head)
        missing = await http.request(method, base + path.format(nowhere), headers=head)
        same_error(refused, missing, b_job, nowhere)
    for route, body in [
        ("/v1/search", {"query": "tide tables"}),
        ("/v1/answer", {"question": "Where are the tide tables?"}),
        ("/v1/answer", {"question": "Where are the tide tables?", "stream": True}),
    ]:
        refused = await http.post(base + route, json={**body, "collection": "team-b-docs"},
                                  headers=head)  # fmt: skip
        missing = await http.post(base + route, json={**body, "collection": "team-a-none"},
                                  headers=head)  # fmt: skip
        same_error(refused, missing, "team-b-docs", "team-a-none")
    # listings: the other team's collection is empty, and a listing of all shows only its own
    listed = await http.get(f"{base}/v1/documents", params={"collection": "team-b-docs"},
                            headers=head)  # fmt: skip
    assert listed.json() == {"documents": [], "next_cursor": None}
    listed = await http.get(f"{base}/v1/documents", headers=head)
    assert {d["collection"] for d in listed.json()["documents"]} == {"team-a-docs"}
    everything = await http.get(f"{base}/v1/documents")  # the admin key sees both
    assert {d["collection"] for d in everything.json()["documents"]} >= {
        "team-a-docs", "team-b-docs"
    }  # fmt: skip
    # an upload into the other team's collection is refused and stores nothing
    assert_error(await served.upload(team_a, "team-b-docs", b"planted text\n"), 404, "not_found")
    after = await http.get(f"{base}/v1/documents", params={"collection": "team-b-docs"})
    assert [d["id"] for d in after.json()["documents"]] == [b_id]
    # and the other team's document is still there
    assert (await http.get(f"{base}/v1/documents/{b_id}")).status_code == 200
    found = await http.post(f"{base}/v1/search",
                            json={"query": "lighthouse logbook", "collection": "team-a-docs"},
                            headers=head)  # fmt: skip
    assert [r["document_id"] for r in found.json()["results"]] == [served.doc_a["id"]]


async def test_revoked_key_stops_at_once_on_every_replica(served: Served, tmp_path: Path) -> None:
    token = await served.key(["read"], ["team-a-*"])
    base, http = served.base, served.http
    # a second replica on the same registry database
    replica_settings = served.settings.model_copy(
        update={"data_dir": tmp_path, "database_url": served.settings.registry_url}
    )
    async with serve_app(create_app(replica_settings)) as replica:
        for url in [base, replica]:
            assert (await http.get(f"{url}/v1/keys/self", headers=bearer(token))).is_success
        key_id = (await http.get(f"{base}/v1/keys/self", headers=bearer(token))).json()["id"]
        assert (await http.delete(f"{replica}/v1/keys/{key_id}")).status_code == 204
        for url in [base, replica]:
            response = await http.get(f"{url}/v1/keys/self", headers=bearer(token))
            assert_error(response, 401, "unauthorized")
    listed = (await http.get(f"{base}/v1/keys")).json()["keys"]
    assert key_id not in {k["id"] for k in listed}
    assert token not in str(listed)  # secrets are never listed
    revoked = (await http.get(f"{base}/v1/keys", params={"include_revoked": True})).json()
    assert key_id in {k["id"] for k in revoked["keys"]}
    assert_error(await http.delete(f"{base}/v1/keys/{'0' * 32}"), 404, "not_found")


def test_the_app_refuses_open_mode_off_loopback(base_settings: Settings) -> None:
    wide = base_settings.model_copy(update={"host": "0.0.0.0", "auth": "open"})
    with pytest.raises(ValueError, match="loopback"):
        create_app(wide)
