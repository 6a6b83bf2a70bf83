"""The durable job queue on a real SQLite file and the real PostgreSQL: claims, leases,
heartbeats, retries with backoff."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from ingest.registry import (
    LEASE_EXPIRED,
    JobNotFound,
    JobNotRetryable,
    JobRecord,
    Registry,
    backoff_delay,
)
from ingest.registry.testing import (
    ManualClock,
    ScratchDatabase,
    clear,
    postgres_unreachable,
    scratch_database,
)
from tests.conftest import wait_for

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
LEASE = 30.0


@pytest.fixture(scope="module", params=BACKENDS)
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> AsyncIterator[ScratchDatabase]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('queue') / 'registry.db'}"
    else:
        if reason := await postgres_unreachable(postgres_url):
            pytest.skip(reason)
        url = postgres_url
    async with scratch_database(url) as database:
        yield database


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def registry(db: ScratchDatabase, clock: ManualClock) -> Registry:
    await clear(db.engine)
    # no jitter: a failed attempt n waits base * 2 ** (n - 1) seconds
    return Registry(db.engine, clock=clock, backoff_base=10.0, backoff_cap=60.0, rand=lambda: 1.0)


async def enqueue(registry: Registry, name: str, max_attempts: int = 3) -> JobRecord:
    digest = hashlib.sha256(name.encode()).hexdigest()
    _, job, _ = await registry.add_document("q", name, "text/plain", digest, 1, {}, max_attempts)
    assert job is not None
    return job


async def claimed(registry: Registry, owner: str = "w1", lease: float = LEASE) -> JobRecord:
    job = await registry.claim_job(owner, lease)
    assert job is not None
    return job


# --- claiming -----------------------------------------------------------------------------------


async def test_nothing_to_claim(registry: Registry) -> None:
    assert await registry.claim_job("w1", LEASE) is None


async def test_claim_takes_the_oldest_job_with_a_lease(
    registry: Registry, clock: ManualClock
) -> None:
    first = await enqueue(registry, "first")
    clock.advance(1)
    await enqueue(registry, "second")
    job = await claimed(registry)
    assert job.id == first.id
    assert (job.state, job.attempts, job.lease_owner) == ("running", 1, "w1")
    assert job.lease_expires_at == clock() + timedelta(seconds=LEASE)
    doc = await registry.get_document(job.document_id)
    assert doc is not None
    assert doc.status == "processing"
    assert (await claimed(registry, "w2")).id != first.id
    assert await registry.claim_job("w3", LEASE) is None
    assert await registry.count_jobs("running") == 2


async def test_concurrent_claimers_never_share_a_job(registry: Registry) -> None:
    jobs = {(await enqueue(registry, f"job {i}")).id for i in range(20)}
    claims: list[tuple[str, str]] = []

    async def worker(owner: str) -> None:
        while (job := await registry.claim_job(owner, LEASE)) is not None:
            claims.append((owner, job.id))
            await asyncio.sleep(0)

    await asyncio.gather(*(worker(f"w{i}") for i in range(5)))
    assert sorted(job_id for _, job_id in claims) == sorted(jobs)
    assert await registry.count_jobs("running") == 20


async def test_claimers_on_separate_engines_never_share_a_job(
    registry: Registry, db: ScratchDatabase
) -> None:
    """Two engines on one database stand for two worker processes."""
    jobs = {(await enqueue(registry, f"job {i}")).id for i in range(20)}
    other_engine = db.another_engine()
    other = Registry(other_engine)
    claims: list[str] = []

    async def worker(registry: Registry, owner: str) -> None:
        while (job := await registry.claim_job(owner, LEASE)) is not None:
            claims.append(job.id)

    try:
        await asyncio.gather(
            *(worker(registry, f"a{i}") for i in range(3)),
            *(worker(other, f"b{i}") for i in range(3)),
        )
    finally:
        await other_engine.dispose()
    assert sorted(claims) == sorted(jobs)


# --- leases -------------------------------------------------------------------------------------


async def test_an_expired_lease_lets_another_worker_claim_the_job(
    registry: Registry, clock: ManualClock
) -> None:
    job = await enqueue(registry, "a")
    await claimed(registry, "dead", lease=10)
    clock.advance(9)
    assert await registry.claim_job("w2", LEASE) is None
    clock.advance(2)
    again = await claimed(registry, "w2")
    assert (again.id, again.attempts, again.lease_owner) == (job.id, 2, "w2")
    assert again.error is not None
    assert again.error["type"] == LEASE_EXPIRED
    # the first worker finds out that it lost the job, and changes nothing
    assert not await registry.heartbeat(job.id, "dead", LEASE)
    assert not await registry.set_progress(job.id, "dead", "embed", 1, 2)
    assert await registry.complete_job(job.id, "dead") is None
    assert await registry.fail_job(job.id, "dead", "x", "y", retryable=False) is None
    assert (await registry.get_job(job.id)) == again


async def test_a_real_short_lease_expires(db: ScratchDatabase) -> None:
    await clear(db.engine)
    registry = Registry(db.engine)
    job = await enqueue(registry, "a")
    await claimed(registry, "dead", lease=0.3)
    assert await registry.claim_job("w2", 0.3) is None
    taken = await wait_for(lambda: registry.claim_job("w2", 0.3))  # once the lease expired
    assert taken is not None and taken.id == job.id


async def test_heartbeats_keep_the_lease(registry: Registry, clock: ManualClock) -> None:
    job = await enqueue(registry, "a")
    await claimed(registry, "w1", lease=10)
    for _ in range(3):
        clock.advance(8)
        assert await registry.heartbeat(job.id, "w1", 10)
        assert await registry.claim_job("w2", LEASE) is None
    current = await registry.get_job(job.id)
    assert current is not None
    assert current.lease_expires_at == clock() + timedelta(seconds=10)
    assert current.attempts == 1


async def test_a_worker_dying_on_every_attempt_fails_the_job(
    registry: Registry, clock: ManualClock
) -> None:
    job = await enqueue(registry, "poison", max_attempts=2)
    await claimed(registry, "w1", lease=5)
    clock.advance(6)
    assert (await claimed(registry, "w2", lease=5)).attempts == 2
    clock.advance(6)
    assert await registry.claim_job("w3", LEASE) is None
    failed = await registry.get_job(job.id)
    assert failed is not None
    assert (failed.state, failed.attempts, failed.lease_owner) == ("failed", 2, None)
    assert failed.error is not None
    assert failed.error["type"] == LEASE_EXPIRED
    assert "attempt 2 of 2" in failed.error["message"]
    doc = await registry.get_document(job.document_id)
    assert doc is not None
    assert doc.status == "failed"
    assert doc.error == failed.error


# --- progress, success, failure -----------------------------------------------------------------


async def test_progress_and_completion(registry: Registry) -> None:
    job = await enqueue(registry, "a")
    await claimed(registry)
    assert await registry.set_progress(job.id, "w1", "embed", 3, 10)
    progress = await registry.get_job(job.id)
    assert progress is not None
    assert progress.to_api()["stage"] == "embed"
    assert progress.to_api()["progress"] == {"done": 3, "total": 10}
    assert not await registry.set_progress(job.id, "intruder", "embed", 4, 10)
    done = await registry.complete_job(job.id, "w1", pages=2, chunks=10)
    assert done is not None
    assert (done.state, done.lease_owner, done.error) == ("succeeded", None, None)
    doc = await registry.get_document(job.document_id)
    assert doc is not None
    assert (doc.status, doc.pages, doc.chunks) == ("ready", 2, 10)
    assert await registry.claim_job("w2", LEASE) is None
    assert not await registry.heartbeat(job.id, "w1", LEASE)


async def test_retryable_failures_back_off_then_fail_for_good(
    registry: Registry, clock: ManualClock
) -> None:
    job = await enqueue(registry, "flaky", max_attempts=2)
    await claimed(registry)
    retry = await registry.fail_job(job.id, "w1", "upstream_unavailable", "503", retryable=True)
    assert retry is not None
    assert (retry.state, retry.lease_owner) == ("queued", None)
    assert retry.not_before == clock() + timedelta(seconds=10)  # base 10, first attempt
    assert retry.error == {"type": "upstream_unavailable", "message": "503"}
    doc = await registry.get_document(job.document_id)
    assert doc is not None
    assert doc.status == "queued"
    clock.advance(9)
    assert await registry.claim_job("w2", LEASE) is None  # still backing off
    clock.advance(1)
    second = await claimed(registry, "w2")
    assert (second.id, second.attempts) == (job.id, 2)
    assert second.error == retry.error  # the last error stays visible while it runs again
    final = await registry.fail_job(
        job.id, "w2", "upstream_unavailable", "503 again", retryable=True
    )
    assert final is not None
    assert final.state == "failed"  # no attempts left
    assert final.to_api()["error"] == {"type": "upstream_unavailable", "message": "503 again"}
    doc = await registry.get_document(job.document_id)
    assert doc is not None
    assert (doc.status, doc.error) == ("failed", final.error)
    assert await registry.claim_job("w3", LEASE) is None


async def test_a_permanent_failure_is_final_at_once(registry: Registry) -> None:
    job = await enqueue(registry, "corrupt", max_attempts=5)
    await claimed(registry)
    failed = await registry.fail_job(job.id, "w1", "corrupt_pdf", "not a PDF", retryable=False)
    assert failed is not None
    assert (failed.state, failed.attempts) == ("failed", 1)
    assert await registry.count_jobs("failed") == 1


async def test_retry_job_requeues_a_failed_job(registry: Registry) -> None:
    job = await enqueue(registry, "again", max_attempts=1)
    await claimed(registry)
    with pytest.raises(JobNotRetryable):
        await registry.retry_job(job.id)  # running
    await registry.fail_job(job.id, "w1", "embed_failed", "boom", retryable=True)
    retried = await registry.retry_job(job.id)
    assert (retried.state, retried.attempts, retried.error) == ("queued", 0, None)
    doc = await registry.get_document(job.document_id)
    assert doc is not None
    assert (doc.status, doc.error) == ("queued", None)
    assert (await claimed(registry, "w2")).attempts == 1
    with pytest.raises(JobNotFound):
        await registry.retry_job("missing")


async def test_a_deleted_document_takes_its_running_job_along(registry: Registry) -> None:
    job = await enqueue(registry, "doomed")
    await claimed(registry)
    await registry.delete_document(job.document_id)
    assert not await registry.heartbeat(job.id, "w1", LEASE)
    assert await registry.complete_job(job.id, "w1") is None


async def test_count_jobs_by_state(registry: Registry) -> None:
    for i in range(3):
        await enqueue(registry, f"n{i}")
    await claimed(registry)
    assert await registry.count_jobs() == 3
    assert await registry.count_jobs("queued") == 2
    assert await registry.count_jobs("running") == 1
    assert await registry.count_jobs("succeeded") == 0


# --- the backoff policy (pure) ------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    top = [backoff_delay(n, 2.0, 30.0, lambda: 1.0) for n in range(1, 7)]
    assert top == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    bottom = [backoff_delay(n, 2.0, 30.0, lambda: 0.0) for n in range(1, 7)]
    assert bottom == [t / 2 for t in top]
    assert backoff_delay(10_000, 2.0, 30.0) <= 30.0


def test_default_jitter_spreads_delays() -> None:
    delays = {backoff_delay(3, 1.0, 60.0) for _ in range(20)}
    assert len(delays) > 1
    assert all(2.0 <= d <= 4.0 for d in delays)


async def test_records_refuse_naive_clocks(tmp_path: Path) -> None:
    from datetime import datetime

    registry = await Registry.connect(
        f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
        clock=lambda: datetime(2026, 1, 1),  # naive: the point of the test
    )
    try:
        with pytest.raises(ValueError, match="aware"):
            await registry.claim_job("w", LEASE)
    finally:
        await registry.close()
