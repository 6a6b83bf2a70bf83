"""The API fuzzed with keys on (issue 14): schemathesis generates requests from each app's own
OpenAPI schema and sends them, with a real key in ``Authorization: Bearer``, to the real service
(real embedding and generation llama-servers, the embedded store, the SQLite registry, ingestion
workers) and to the real balancer in front of a real llama-server. Every answer must be no 5xx,
have a status the schema documents, and match the schema's body, content type and headers for
that status. Requests are derandomized (the same ones on every run) and few per operation, so
that the test stays within CI's time: it is a net for regressions, not a search for new bugs.

Phases: the admin key (every scope, every collection) with valid and with invalid requests; a
read-only key limited to ``team-*`` collections; no key at all (everything but the probes and
the schema is a 401)."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rag.api.app import create_app
from rag.balancer import balancer_settings, create_balancer_app
from rag.core.settings import Settings
from tests.conftest import RunningServer, serve_app, service_settings, wait_for, wait_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = "fuzz-admin-key-0123456789abcdefghijklmnop"
BALANCER_ADMIN = "fuzz-balancer-admin-0123456789abcdef"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]
# Answers run the generation model (about a second each on two cores): fewer of them.
EXAMPLES = {"POST /v1/answer": 6}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@dataclass
class Target:
    base: str
    raw: dict[str, Any]  # the app's OpenAPI schema

    def __post_init__(self) -> None:
        self.schema = schemathesis.openapi.from_dict(self.raw)

    def invalid_inputs(self, method: str, path: str) -> bool:
        """Whether the operation takes input that can be invalid (a body or query parameters;
        any string is a valid path parameter)."""
        operation = self.raw["paths"][path][method]
        query = [p for p in operation.get("parameters", []) if p["in"] == "query"]
        return "requestBody" in operation or bool(query)


@pytest.fixture(scope="module")
async def service(
    base_settings: Settings,
    embedding_server: RunningServer,
    generation_server: RunningServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Target]:
    settings = service_settings(
        base_settings,
        tmp_path_factory.mktemp("fuzz"),
        embedding_server,
        generation_server,
        auth="keys",
        admin_key=SecretStr(ADMIN),
        answer_max_tokens=32,
    )
    app = create_app(settings, run_workers=True)
    async with serve_app(app) as base, httpx.AsyncClient(timeout=60, headers=bearer(ADMIN)) as http:
        # something to find: the default collection and a team's, each with a document
        for collection in ["default", "team-fuzz"]:
            response = await http.post(
                f"{base}/v1/documents",
                data={"collection": collection},
                files={"file": ("notes.txt", io.BytesIO(b"The lighthouse logbook is blue.\n"))},
            )
            assert response.status_code == 202, response.text
            (document,) = response.json()["documents"]
            assert (await wait_job(http, base, document["job_id"]))["state"] == "succeeded"
        yield Target(base, app.openapi())
        # the fuzz never revoked the key it used
        assert (await http.get(f"{base}/v1/keys/self")).status_code == 200


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)  # schemathesis' reports
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)  # (operation, status)

    def statuses(self, label: str) -> set[int]:
        return {status for (name, status) in self.answers if name == label}


def fuzz(
    target: Target,
    headers: dict[str, str],
    *,
    examples: int,
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE,),
) -> Outcome:
    """Send ``examples`` generated requests per operation and mode.
    (Blocking: run it in a thread while the apps serve on the event loop.)"""
    outcome = Outcome()
    for result in target.schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        for mode in modes:
            if mode.is_negative and not target.invalid_inputs(operation.method, operation.path):
                continue
            try:
                count = min(examples, EXAMPLES.get(label, examples))
                _run(operation, mode, target.base, headers, count, outcome.answers)
            except Unsatisfiable:  # no invalid input of this kind for this operation
                pass
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                outcome.failures.append(f"{label} ({mode.value}): {exc}")
    return outcome


def _run(
    operation: Any,
    mode: GenerationMode,
    base: str,
    headers: dict[str, str],
    examples: int,
    answers: Counter[tuple[str, int]],
) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    cases = operation.as_strategy(generation_mode=mode)
    if mode.is_positive:  # the schema's own examples too (a valid upstream URL, for one)
        cases = st.one_of(cases, *operation.schema.get_strategies_from_examples(operation))

    @given(case=cases)
    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same requests on every run
        database=None,
        phases=[Phase.explicit, Phase.generate],  # a failure is reported as found, unshrunk
        suppress_health_check=list(HealthCheck),
    )
    def one(case: Any) -> None:
        response = case.call(base_url=base, headers=headers, timeout=60)
        answers[label, response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    one()


def assert_clean(outcome: Outcome) -> None:
    assert not outcome.failures, "\n\n".join(outcome.failures)


async def test_fuzz_with_the_admin_key(service: Target) -> None:
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    outcome = await asyncio.to_thread(fuzz, service, bearer(ADMIN), examples=25, modes=modes)
    assert_clean(outcome)
    # it got past the key to the real work, and past the schema to the validation
    assert 200 in outcome.statuses("POST /v1/search")
    assert 422 in outcome.statuses("POST /v1/search")
    assert 200 in outcome.statuses("GET /v1/documents")
    assert outcome.statuses("POST /v1/documents") & {200, 202, 415}  # parsed, then detected


async def test_fuzz_with_a_read_only_key(service: Target) -> None:
    async with httpx.AsyncClient(timeout=30, headers=bearer(ADMIN)) as http:
        created = await http.post(
            f"{service.base}/v1/keys",
            json={"name": "fuzz-reader", "scopes": ["read"], "collections": ["team-*"]},
        )
        assert created.status_code == 201, created.text
    outcome = await asyncio.to_thread(fuzz, service, bearer(created.json()["key"]), examples=8)
    assert_clean(outcome)
    assert outcome.statuses("POST /v1/documents") == {403}
    assert outcome.statuses("GET /v1/keys") == {403}


async def test_fuzz_without_a_key(service: Target) -> None:
    outcome = await asyncio.to_thread(fuzz, service, {}, examples=3)
    assert_clean(outcome)
    public = {"GET /healthz", "GET /readyz"}
    assert {status for (label, status) in outcome.answers if label not in public} == {401}


@pytest.fixture(scope="module")
async def balancer(embedding_server: RunningServer) -> AsyncIterator[Target]:
    settings = balancer_settings(
        upstreams=embedding_server.urls,
        poll_interval=0.2,
        admin_key=BALANCER_ADMIN,
        max_upstreams=8,
        allowed_hosts=["127.0.0.1", "localhost"],
    )
    app = create_balancer_app(settings)
    async with serve_app(app) as base, httpx.AsyncClient(timeout=10) as http:
        assert await wait_for(lambda: _ready(http, base), within=30)
        schema = (await http.get(f"{base}/openapi.json")).json()
        yield Target(base, _own_routes(schema))


async def _ready(http: httpx.AsyncClient, base: str) -> bool:
    return (await http.get(f"{base}/health")).status_code == 200


def _own_routes(schema: dict[str, Any]) -> dict[str, Any]:
    """The balancer's own routes (health, pool, membership, metrics), not the proxied ones."""
    own = {"/health", "/metrics"}
    paths = {p: item for p, item in schema["paths"].items() if p in own or p.startswith("/v1/pool")}
    return {**schema, "paths": paths}


def _paths(schema: Any) -> Iterator[str]:
    for result in schema.get_all_operations():
        yield result.ok().path


async def test_fuzz_the_balancer_with_its_admin_key(balancer: Target) -> None:
    assert set(_paths(balancer.schema)) >= {"/v1/pool", "/v1/pool/upstreams", "/health"}
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    outcome = await asyncio.to_thread(
        fuzz, balancer, bearer(BALANCER_ADMIN), examples=25, modes=modes
    )
    assert_clean(outcome)
    assert 200 in outcome.statuses("GET /v1/pool")
    assert outcome.statuses("POST /v1/pool/upstreams") & {200, 201}


async def test_fuzz_the_balancer_without_a_key(balancer: Target) -> None:
    outcome = await asyncio.to_thread(fuzz, balancer, {}, examples=3)
    assert_clean(outcome)
    assert {s for (label, s) in outcome.answers if label != "GET /health"} == {401}
