"""Request rate per API key: a key over its rate is 429 quota_exceeded with Retry-After, and
other keys go on; the bucket refills with time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from rag.api.app import create_app
from rag.core.errors import QuotaExceeded
from rag.core.settings import Settings
from rag.service.quotas import RateLimiter
from tests.conftest import serve_app

pytestmark = pytest.mark.integration
ADMIN = "test-admin-key-for-quotas-0123456789abcdef"


def test_the_bucket_refuses_past_the_rate_and_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(6, clock=lambda: now[0])  # one request every 10 s, bursts of 6
    for _ in range(6):
        limiter.charge("a", "team-a")
    with pytest.raises(QuotaExceeded) as refused:
        limiter.charge("a", "team-a")
    assert refused.value.retry_after == 10 and refused.value.status == 429
    assert refused.value.type == "quota_exceeded"
    limiter.charge("b", "team-b")  # another key has its own bucket
    now[0] = 10.0
    limiter.charge("a", "team-a")
    with pytest.raises(QuotaExceeded):
        limiter.charge("a", "team-a")
    RateLimiter(0).charge("a", "team-a")  # 0: no limit


@pytest.fixture
async def base(base_settings: Settings, tmp_path: object) -> AsyncIterator[str]:
    settings = base_settings.model_copy(
        update={
            "data_dir": tmp_path,
            "auth": "keys",
            "admin_key": SecretStr(ADMIN),
            "key_rate_per_minute": 3,
        }
    )
    async with serve_app(create_app(settings)) as url:
        yield url


async def test_a_key_over_its_rate_is_429_and_others_go_on(base: str) -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(timeout=30) as http:
        tokens = []
        for team in ["team-a", "team-b"]:
            body = {"name": team, "scopes": ["read"], "collections": [f"{team}-*"]}
            created = await http.post(f"{base}/v1/keys", json=body, headers=admin)
            assert created.status_code == 201, created.text
            tokens.append({"authorization": f"Bearer {created.json()['key']}"})
        for _ in range(3):
            assert (await http.get(f"{base}/v1/keys/self", headers=tokens[0])).status_code == 200
        refused = await http.get(f"{base}/v1/keys/self", headers=tokens[0])
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "quota_exceeded"
        assert int(refused.headers["retry-after"]) >= 1
        assert (await http.get(f"{base}/v1/keys/self", headers=tokens[1])).status_code == 200


async def test_a_key_past_its_daily_token_budget_is_429_on_every_replica(
    base_settings: Settings, tmp_path: Path
) -> None:
    settings = base_settings.model_copy(
        update={
            "data_dir": tmp_path,
            "auth": "keys",
            "admin_key": SecretStr(ADMIN),
            "key_tokens_per_day": 100,
        }
    )
    app = create_app(settings)
    admin = {"authorization": f"Bearer {ADMIN}"}
    async with serve_app(app) as base, httpx.AsyncClient(timeout=30) as http:
        keys = []
        for team in ["team-a", "team-b"]:
            body = {"name": team, "scopes": ["read"], "collections": ["*"]}
            created = (await http.post(f"{base}/v1/keys", json=body, headers=admin)).json()
            keys.append((created["id"], {"authorization": f"Bearer {created['key']}"}))
        # what answers on any replica recorded for team-a today (the registry is shared)
        usage = app.state.components.usage
        await usage.record(key_id=keys[0][0], key_name="team-a", collection="docs",
                           prompt_tokens=90, completion_tokens=10)  # fmt: skip
        question = {"question": "Where are the tide tables?", "collection": "nowhere"}
        refused = await http.post(f"{base}/v1/answer", json=question, headers=keys[0][1])
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["type"] == "quota_exceeded" and error["quota"] == "tokens_per_day"
        assert 1 <= int(refused.headers["retry-after"]) <= 86400
        other = await http.post(f"{base}/v1/answer", json=question, headers=keys[1][1])
        # within its budget: on to retrieval (no embedding server here, so 503)
        assert other.json()["error"]["type"] != "quota_exceeded"
