"""Usage and cost: embedding tokens per key and collection, exactly what llama-server reported
(uploads' chunks, search queries), the per-key counters on /metrics, costs from the price
settings, ``GET /v1/usage`` and ``rag usage report``. The real embedding llama-server, the
service with API keys and its workers, the registry on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from ingest.registry import Prices, Registry, UsageRow, UsageStore, total
from ingest.registry.testing import ScratchDatabase, clear, scratch_database
from rag.api.app import create_app
from rag.cli.main import app as cli
from rag.cli.usage import parse_since
from rag.core.embeddings import Account, Embedder, billed_to
from rag.core.settings import Settings
from rag.service.components import Components
from rag.service.metrics import Metrics
from rag.service.usage import UsageRecorder
from tests.conftest import RunningServer, serve_app, service_settings, wait_for, wait_job
from tests.test_registry import BACKENDS, database_url

ADMIN = "usage-admin-key-0123456789abcdefghijklmnop"
PRICES = {
    "price_per_1k_prompt_tokens": 0.5,
    "price_per_1k_completion_tokens": 1.5,
    "price_per_1k_embedding_tokens": 0.02,
    "price_currency": "EUR",
}
REPORT = (
    "The harbour of Brightwater keeps {n} fishing boats moored along the eastern quay. "
    "Each boat is inspected every {n} weeks by the harbour master, who writes the result into "
    "a logbook kept in the blue cabinet of the tide office. "
)
DOCUMENT = "".join(REPORT.format(n=n) for n in range(60)).encode()
NOTE = b"Team B keeps the tide tables of the harbour in the red archive.\n"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def reported_tokens(server: RunningServer, texts: list[str]) -> int:
    """What llama-server itself reports for embedding ``texts`` (its ``usage.prompt_tokens``)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        response = await http.post("/v1/embeddings", json={"input": texts})
        response.raise_for_status()
        return int(response.json()["usage"]["prompt_tokens"])


# --- the store and prices -------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> AsyncIterator[ScratchDatabase]:
    url = await database_url(request.param, tmp_path_factory.mktemp("usage"), postgres_url)
    async with scratch_database(url) as database:
        yield database


def row(key: str, collection: str, **figures: Any) -> UsageRow:
    values = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "embedding_tokens": 0}
    values.update(figures)
    day = values.pop("day", date.today().isoformat())
    return UsageRow(day, f"id-{key}", key, collection, **values)


async def test_embedding_tokens_and_requests_add_up_per_row(db: ScratchDatabase) -> None:
    await clear(db.engine)
    store = UsageStore(db.engine)
    await asyncio.gather(
        *(store.add([row("team-a", "docs", requests=1, embedding_tokens=7),
                     row("team-b", "docs", embedding_tokens=3)]) for _ in range(10))
    )  # fmt: skip
    await store.record(
        key_id="id-team-a", key_name="team-a", collection="docs",
        prompt_tokens=100, completion_tokens=20,
    )  # fmt: skip
    await store.record(
        key_id="id-team-a", key_name="team-a", collection="other", embedding_tokens=5, requests=0
    )
    (a,) = await store.totals(key_id="id-team-a", collection="docs")
    assert (a.requests, a.prompt_tokens, a.completion_tokens, a.embedding_tokens) == (
        11, 100, 20, 70
    )  # fmt: skip
    (other,) = await store.totals(key_id="id-team-a", collection="other")
    assert (other.requests, other.embedding_tokens) == (0, 5)
    (b,) = await store.totals(key_id="id-team-b")
    assert (b.requests, b.embedding_tokens) == (0, 30)


def test_cost_comes_from_the_prices_per_1k_tokens() -> None:
    prices = Prices(prompt=0.5, completion=1.5, embedding=0.02, currency="EUR")
    first = row("team-a", "docs", requests=2, prompt_tokens=1000, completion_tokens=200,
                embedding_tokens=5000)  # fmt: skip
    second = row("team-a", "x", requests=1, prompt_tokens=10, embedding_tokens=1)
    assert first.cost(prices) == pytest.approx(0.5 + 0.3 + 0.1)
    assert first.to_api(prices)["cost"] == pytest.approx(0.9)
    assert first.to_api()["cost"] == 0  # no prices: everything is free
    assert total([first, second], prices) == {
        "requests": 3,
        "prompt_tokens": 1010,
        "completion_tokens": 200,
        "embedding_tokens": 5001,
        "cost": pytest.approx((1010 * 0.5 + 200 * 1.5 + 5001 * 0.02) / 1000),
    }


async def test_the_recorder_flushes_on_its_own(tmp_path: Path) -> None:
    registry = await Registry.connect(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    store = UsageStore(registry.engine)
    recorder = UsageRecorder(store, Metrics().tokens, flush_seconds=0.05)
    recorder.start()
    try:
        account = Account("id-a", "team-a", "docs")
        recorder.embedded(account, 12)
        recorder.searched(account)
        recorder.embedded(account, 30)
        rows = await wait_for(store.totals, within=5)
        assert [(r.requests, r.embedding_tokens) for r in rows] == [(1, 42)]
        recorder.embedded(account, 8)
    finally:
        await recorder.close()  # flushes what is left
        (last,) = await store.totals()
        await registry.close()
    assert last.embedding_tokens == 50


# --- the embedder, on the real embedding server ------------------------------------------------


async def test_each_account_is_billed_what_llama_server_reported(
    embedding_server: RunningServer,
) -> None:
    billed: dict[Account, int] = {}

    def sink(account: Account, tokens: int) -> None:
        billed[account] = billed.get(account, 0) + tokens

    texts = {
        Account("id-a", "team-a", "docs"): [f"Team A's note {n} on the tides." for n in range(9)],
        Account("id-b", "team-b", "docs"): ["A short one.", "Team B writes somewhat longer notes."],
        Account("id-a", "team-a", "other"): ["The same key in another collection."],
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=embedding_server.url, timeout=60) as http:
        embedder = Embedder(http, batch_size=32, concurrency=2, on_usage=sink)

        async def embed(account: Account | None, part: list[str]) -> list[list[float]]:
            with billed_to(account):
                return await embedder.embed(part)

        try:  # queued together: one batch of the dispatcher, sent as one call per account
            results = await asyncio.gather(
                *(embed(account, part) for account, part in texts.items()),
                embed(None, ["Nobody pays for this one."]),
            )
        finally:
            await embedder.close()
    assert [len(vectors) for vectors in results] == [9, 2, 1, 1]
    expected = {account: await reported_tokens(embedding_server, part)
                for account, part in texts.items()}  # fmt: skip
    assert billed == expected
    assert all(tokens > 0 for tokens in billed.values())


# --- the service with keys -------------------------------------------------------------------


@dataclass
class Served:
    base: str
    app: Any
    http: httpx.AsyncClient  # sends the admin key
    team_a: tuple[str, str]  # (key id, secret)
    team_b: tuple[str, str]
    upload: dict[str, Any]  # team A's document (several chunks)
    note: dict[str, Any]  # team B's (one chunk)

    @property
    def components(self) -> Components:
        components: Components = self.app.state.components
        return components

    async def usage(self, token: str | None = None, **params: str) -> dict[str, Any]:
        headers = bearer(token) if token else {}
        response = await self.http.get(f"{self.base}/v1/usage", params=params, headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module", params=BACKENDS)
async def served(
    request: pytest.FixtureRequest,
    base_settings: Settings,
    embedding_server: RunningServer,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
) -> AsyncIterator[Served]:
    folder = tmp_path_factory.mktemp("usage-service")
    url = await database_url(request.param, folder, postgres_url)
    async with scratch_database(url) as db:
        settings = service_settings(
            base_settings,
            folder,
            embedding_server,
            auth="keys",
            admin_key=SecretStr(ADMIN),
            database_url=db.url,
            database_schema=db.schema,
            usage_flush_seconds=60.0,  # only GET /v1/usage (and closing) flushes here
            **PRICES,
        )
        app = create_app(settings, run_workers=True)
        async with (
            serve_app(app) as base,
            httpx.AsyncClient(timeout=60, headers=bearer(ADMIN)) as http,
        ):
            keys = []
            for team in ("team-a", "team-b"):
                body = {"name": team, "scopes": ["read", "write"], "collections": [f"{team}-*"]}
                response = await http.post(f"{base}/v1/keys", json=body)
                assert response.status_code == 201, response.text
                keys.append((response.json()["id"], response.json()["key"]))
            uploads = []
            for (_, token), collection, data in [
                (keys[0], "team-a-harbour", DOCUMENT),
                (keys[1], "team-b-notes", NOTE),
            ]:
                response = await http.post(
                    f"{base}/v1/documents",
                    headers=bearer(token),
                    data={"collection": collection},
                    files={"file": ("notes.txt", io.BytesIO(data))},
                )
                assert response.status_code == 202, response.text
                (document,) = response.json()["documents"]
                assert (await wait_job(http, base, document["job_id"]))["state"] == "succeeded"
                uploads.append(document)
            yield Served(base, app, http, keys[0], keys[1], uploads[0], uploads[1])


async def chunk_texts(components: Components, collection: str, document_id: str) -> list[str]:
    return [
        str(record.payload["text"])
        async for record in components.store.records(collection, fields=["text", "document_id"])
        if record.payload.get("document_id") == document_id
    ]


def rows_of(body: dict[str, Any], key_id: str, collection: str) -> list[dict[str, Any]]:
    return [r for r in body["usage"] if r["key_id"] == key_id and r["collection"] == collection]


@pytest.mark.integration
async def test_an_upload_bills_its_uploader_what_llama_server_reported_for_its_chunks(
    served: Served, embedding_server: RunningServer
) -> None:
    texts = await chunk_texts(served.components, "team-a-harbour", served.upload["id"])
    assert len(texts) > 3, "a document of several chunks"
    expected = await reported_tokens(embedding_server, texts)
    (mine,) = rows_of(await served.usage(), served.team_a[0], "team-a-harbour")
    assert mine["key_name"] == "team-a"
    assert mine["embedding_tokens"] == expected
    assert mine["requests"] == 0  # ingestion adds tokens, not requests
    assert mine["cost"] == pytest.approx(expected * 0.02 / 1000)
    # the same bytes again change nothing, and bill nothing
    again = await served.http.post(
        f"{served.base}/v1/documents",
        headers=bearer(served.team_a[1]),
        data={"collection": "team-a-harbour"},
        files={"file": ("notes.txt", io.BytesIO(DOCUMENT))},
    )
    assert again.status_code == 200, again.text
    (same,) = rows_of(await served.usage(), served.team_a[0], "team-a-harbour")
    assert same["embedding_tokens"] == expected


@pytest.mark.integration
async def test_searches_bill_their_query_tokens_and_count_as_requests(
    served: Served, embedding_server: RunningServer
) -> None:
    key_id, token = served.team_b
    queries = ["Where are the tide tables?", "Which archive holds the harbour's tide tables?"]
    for query in queries:
        response = await served.http.post(
            f"{served.base}/v1/search",
            headers=bearer(token),
            json={"query": query, "collection": "team-b-notes", "top_k": 1},
        )
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["document_id"] == served.note["id"]
    refused = await served.http.post(
        f"{served.base}/v1/search",
        headers=bearer(token),
        json={"query": queries[0], "collection": "team-a-harbour"},
    )
    assert refused.status_code == 404  # not its collection: nothing embedded, nothing billed
    mine = await served.usage(token)
    assert {r["key_id"] for r in mine["usage"]} == {key_id}  # a key sees its own rows only
    (b,) = rows_of(mine, key_id, "team-b-notes")
    chunks = await chunk_texts(served.components, "team-b-notes", served.note["id"])
    expected = await reported_tokens(embedding_server, chunks)
    for query in queries:
        expected += await reported_tokens(embedding_server, [query])
    assert b["embedding_tokens"] == expected
    assert b["requests"] == len(queries)


@pytest.mark.integration
async def test_usage_totals_costs_and_filters(served: Served) -> None:
    body = await served.usage()
    assert body["currency"] == "EUR"
    assert body["prices_per_1k_tokens"] == {"prompt": 0.5, "completion": 1.5, "embedding": 0.02}
    rows = body["usage"]
    for key in ("requests", "prompt_tokens", "completion_tokens", "embedding_tokens"):
        assert body["totals"][key] == sum(r[key] for r in rows)
    for r in rows:
        cost = (r["prompt_tokens"] * 0.5 + r["completion_tokens"] * 1.5
                + r["embedding_tokens"] * 0.02) / 1000  # fmt: skip
        assert r["cost"] == pytest.approx(cost)
        assert set(r) == {"day", "key_id", "key_name", "collection", "requests", "prompt_tokens",
                          "completion_tokens", "embedding_tokens", "cost"}  # fmt: skip
    assert body["totals"]["cost"] == pytest.approx(sum(r["cost"] for r in rows))
    only = await served.usage(collection="team-a-harbour")
    assert {r["collection"] for r in only["usage"]} == {"team-a-harbour"}
    one = await served.usage(key_id=served.team_a[0])
    assert {r["key_name"] for r in one["usage"]} == {"team-a"}
    # a key asking for another key's rows sees none; the admin's filter is its own to use
    other = await served.usage(served.team_b[1], key_id=served.team_a[0])
    assert other["usage"] == [] and other["totals"]["embedding_tokens"] == 0
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    assert (await served.usage(since=tomorrow))["usage"] == []


@pytest.mark.integration
async def test_bad_usage_queries_are_4xx_with_the_error_shape(served: Served) -> None:
    for params in ({"since": "last week"}, {"since": "2026-13-01"}, {"collection": "x" * 300}):
        response = await served.http.get(f"{served.base}/v1/usage", params=params)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["type"] == "validation_error" and error["request_id"]
    anonymous = await served.http.get(f"{served.base}/v1/usage", headers={"authorization": ""})
    assert anonymous.status_code == 401


@pytest.mark.integration
async def test_token_counters_by_key_name_on_metrics(served: Served) -> None:
    body = await served.usage()
    response = await served.http.get(f"{served.base}/metrics")
    assert response.status_code == 200
    series = {
        (m[1], m[2]): float(m[3])
        for m in re.finditer(
            r'^rag_tokens_total\{key="([^"]*)",kind="([^"]*)"\} (\S+)$', response.text, re.M
        )
    }
    for team, (key_id, _) in (("team-a", served.team_a), ("team-b", served.team_b)):
        recorded = sum(r["embedding_tokens"] for r in body["usage"] if r["key_id"] == key_id)
        assert series[(team, "embedding")] == recorded > 0
    assert {key for key, _ in series} <= {"team-a", "team-b", "admin"}  # names, never secrets
    assert served.team_a[1] not in response.text and "team-a-harbour" not in response.text


# --- rag usage report ------------------------------------------------------------------------


def test_since_forms() -> None:
    now = datetime(2026, 12, 10, 6, 0, tzinfo=UTC)
    assert parse_since("7d", now=now) == date(2026, 12, 3)
    assert parse_since("30d", now=now) == date(2026, 11, 10)
    assert parse_since("24h", now=now) == date(2026, 12, 9)
    assert parse_since("2026-12-01", now=now) == date(2026, 12, 1)


async def write_rows(data_dir: Path, rows: list[UsageRow]) -> None:
    registry = await Registry.connect(f"sqlite+aiosqlite:///{(data_dir / 'registry.db').resolve()}")
    try:
        await UsageStore(registry.engine).add(rows)
    finally:
        await registry.close()


def test_the_report_prints_a_table_per_team_and_writes_a_png(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n)).isoformat() for n in range(3)]
    rows = [
        row("team-a", "a-docs", day=days[0], requests=3, prompt_tokens=1000,
            completion_tokens=200, embedding_tokens=400),
        row("team-a", "a-more", day=days[1], requests=1, embedding_tokens=600),
        row("team-b", "b-docs", day=days[2], requests=2, prompt_tokens=300, completion_tokens=50),
        row("team-c", "c-docs", day=(today - timedelta(days=30)).isoformat(), requests=9,
            prompt_tokens=99),
    ]  # fmt: skip
    asyncio.run(write_rows(tmp_path, rows))
    for name, value in PRICES.items():
        monkeypatch.setenv(f"RAG_{name.upper()}", str(value))
    plot = tmp_path / "out" / "usage.png"
    result = CliRunner().invoke(
        cli, ["usage", "report", "--since", "7d", "--plot", str(plot), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("team"))
    assert header.split() == ["team", "requests", "prompt", "completion", "embedding", "cost",
                              "(EUR)"]  # fmt: skip
    table = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("team-")}
    a_cost = (1000 * 0.5 + 200 * 1.5 + 1000 * 0.02) / 1000
    b_cost = (300 * 0.5 + 50 * 1.5) / 1000
    assert table["team-a"] == ["4", "1000", "200", "1000", f"{a_cost:g}"]
    assert table["team-b"] == ["2", "300", "50", "0", f"{b_cost:g}"]
    assert "team-c" not in table  # older than 7 days
    (totals,) = [line.split() for line in lines if line.startswith("total")]
    assert totals[1:5] == ["6", "1300", "250", "1000"]
    assert float(totals[5]) == pytest.approx(a_cost + b_cost)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000

    month = CliRunner().invoke(
        cli, ["usage", "report", "--since", "30d", "--plot", str(plot), "--data-dir",
              str(tmp_path), "--json"],
    )  # fmt: skip
    assert month.exit_code == 0, month.output
    assert '"team": "team-c"' in month.output


def test_the_report_refuses_a_bad_since(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["usage", "report", "--since", "last week", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "neither a period" in result.output
    assert not (tmp_path / "usage.png").exists()
