"""Ingestion that cannot stall, through the real service: a parse deadline, a page cap and a memory
limit per parse process fail the job with their reason; a parse process that is killed is replaced
(readiness says so meanwhile) and later jobs go on; a job whose progress stops is failed; deleting
a document while it is ingested leaves nothing searchable; failed documents are listed and can
be retried; stale temporary uploads are removed at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pypdf import PdfReader, PdfWriter
from pypdf.generic import DecodedStreamObject, NameObject
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rag.api.app import create_app
from rag.core.runtime.paths import EMBEDDING_DIMENSIONS
from rag.core.settings import Settings
from rag.core.vectorstore import VectorStore
from tests.conftest import RunningServer, serve_app, service_settings, wait_job
from tests.test_parsing import make_docx, make_pdf

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEXT = b"The lighthouse keeper logs every passing ship in a leather-bound book.\n"
WORDS = ["river", "stone", "lantern", "orchard", "copper", "meadow", "harbor", "violet"]


def slow_pdf() -> bytes:
    """A 19 KB PDF whose one page holds 300,000 text operators: pypdf needs seconds for it."""
    pdf = make_pdf(("A page about to be replaced.",))
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    stream = DecodedStreamObject()
    stream.set_data(b"BT /F1 12 Tf " + b"1 0 0 1 10 10 Tm (a) Tj " * 300_000 + b"ET")
    writer.pages[0][NameObject("/Contents")] = writer._add_object(stream.flate_encode())
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def greedy_docx() -> bytes:
    """A DOCX whose body unpacks to 120 MiB of XML: lxml needs far more than 300 MiB for it."""
    out = io.BytesIO(make_docx())
    body = b'<w:p><w:r><w:t xml:space="preserve">word word word</w:t></w:r></w:p>'
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        original = archive.read("word/document.xml")
    head, tail = original.split(b"<w:body>", 1)
    rebuilt = io.BytesIO()
    with (
        zipfile.ZipFile(out) as source,
        zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for item in source.infolist():
            if item.filename == "word/document.xml":
                repeats = (120 * 2**20) // len(body)
                target.writestr(item.filename, head + b"<w:body>" + body * repeats + tail)
            elif item.filename not in target.namelist():
                target.writestr(item, source.read(item.filename))
    return rebuilt.getvalue()


def long_text(paragraphs: int) -> bytes:
    lines = []
    for index in range(paragraphs):
        words = [WORDS[(index * 7 + k * 3) % len(WORDS)] for k in range(60)]
        lines.append(f"Paragraph {index}: " + " ".join(words) + ".")
    return "\n\n".join(lines).encode()


class Service:
    def __init__(self, http: httpx.AsyncClient, base: str, settings: Settings) -> None:
        self.http, self.base, self.settings = http, base, settings

    async def upload(self, name: str, data: bytes, collection: str = "limits") -> dict[str, Any]:
        response = await self.http.post(
            f"{self.base}/v1/documents",
            data={"collection": collection},
            files={"file": (name, io.BytesIO(data))},
        )
        assert response.status_code == 202, response.text
        (document,) = response.json()["documents"]
        return document  # type: ignore[no-any-return]

    async def finish(self, name: str, data: bytes, within: float = 120) -> dict[str, Any]:
        document = await self.upload(name, data)
        return await wait_job(self.http, self.base, document["job_id"], within)  # type: ignore[no-any-return]

    async def ready(self) -> tuple[int, dict[str, Any]]:
        response = await self.http.get(f"{self.base}/readyz")
        return response.status_code, response.json()


@pytest.fixture
def service_factory(
    base_settings: Settings, embedding_server: RunningServer, tmp_path: Path
) -> Any:
    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Service]:
        settings = service_settings(base_settings, tmp_path, embedding_server, **overrides)
        app = create_app(settings, run_workers=True)
        async with serve_app(app) as base, httpx.AsyncClient(timeout=60) as http:
            yield Service(http, base, settings)

    return start


def parse_processes_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = Path(stat.parent, "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of ``pid`` in clock ticks (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def until(check: Any, within: float = 60, every: float = 0.05) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(every)
    pytest.fail(f"condition not met within {within} s")


async def test_deadline_fails_the_job_and_the_next_one_runs(service_factory: Any) -> None:
    async with service_factory(parse_timeout_seconds=1.0, job_max_attempts=1) as service:
        before = parse_processes_of(os.getpid())
        job = await service.finish("slow.pdf", slow_pdf())
        assert job["state"] == "failed"
        assert job["error"]["type"] == "timeout"
        assert "longer than 1 s" in job["error"]["message"]
        assert (await service.finish("note.txt", TEXT))["state"] == "succeeded"
        after = parse_processes_of(os.getpid())
        assert len(after) == len(before) == 1 and after != before  # replaced, not added


async def test_page_cap_and_memory_limit_fail_with_their_reason(service_factory: Any) -> None:
    async with service_factory(
        parse_max_pages=2, parse_memory_mb=300, max_decompression_ratio=100_000
    ) as service:
        pages = await service.finish("three-pages.pdf", make_pdf())
        assert pages["state"] == "failed" and pages["error"]["type"] == "too_many_pages"
        greedy = await service.finish("greedy.docx", greedy_docx())
        assert greedy["state"] == "failed" and greedy["error"]["type"] == "too_large"
        assert "300 MiB" in greedy["error"]["message"]
        assert (await service.finish("note.txt", TEXT))["state"] == "succeeded"

        listed = await service.http.get(f"{service.base}/v1/documents", params={"status": "failed"})
        failed = {d["filename"]: d for d in listed.json()["documents"]}
        assert set(failed) == {"three-pages.pdf", "greedy.docx"}
        assert failed["three-pages.pdf"]["error"]["type"] == "too_many_pages"
        assert failed["greedy.docx"]["error"]["type"] == "too_large"

        retried = await service.http.post(
            f"{service.base}/v1/documents/{failed['three-pages.pdf']['id']}/retry"
        )
        assert retried.status_code == 202, retried.text
        job = await wait_job(service.http, service.base, retried.json()["id"])
        assert job["state"] == "failed" and job["error"]["type"] == "too_many_pages"
        ready = await service.http.post(f"{service.base}/v1/documents/nope/retry")
        assert ready.status_code == 404 and ready.json()["error"]["type"] == "not_found"


async def test_killed_parse_process_is_replaced_and_readiness_shows_it(
    service_factory: Any,
) -> None:
    async with service_factory(parse_timeout_seconds=120) as service:
        _, body = await service.ready()
        assert body["checks"]["parse_pool"]["ok"], body
        (idle,) = parse_processes_of(os.getpid())
        os.kill(idle, signal.SIGKILL)

        async def not_ready() -> dict[str, Any] | None:
            status, body = await service.ready()
            return body if status == 503 and "parse_pool" in body["missing"] else None

        body = await until(not_ready)
        assert "down" in body["checks"]["parse_pool"]["problem"]

        async def ready_again() -> bool:
            _, body = await service.ready()
            pool = body["checks"]["parse_pool"]  # (no generation server here: 503 anyway)
            return "parse_pool" not in body["missing"] and pool["ok"] and pool["restarts"] >= 1

        await until(ready_again)
        assert (await service.finish("note.txt", TEXT))["state"] == "succeeded"

        # killed in the middle of a document: that job is retried, and the others go on
        document = await service.upload("slow.pdf", slow_pdf())

        (busy,) = parse_processes_of(os.getpid())
        idle_cpu = cpu_ticks(busy)

        async def parsing() -> bool:  # half a second of CPU: it is inside the document
            return cpu_ticks(busy) - idle_cpu > 50

        await until(parsing)
        os.kill(busy, signal.SIGKILL)

        async def requeued() -> dict[str, Any] | None:
            job = (await service.http.get(f"{service.base}/v1/jobs/{document['job_id']}")).json()
            error = job.get("error") or {}
            return job if error.get("type") == "parse_process_died" else None

        job = await until(requeued)
        assert "SIGKILL" in job["error"]["message"]
        deleted = await service.http.delete(f"{service.base}/v1/documents/{document['id']}")
        assert deleted.status_code == 204
        assert (await service.finish("other.txt", TEXT + b"Second.\n"))["state"] == "succeeded"


async def test_delete_during_ingestion_leaves_nothing_searchable(service_factory: Any) -> None:
    async with service_factory(
        workers=1, embedding_batch_size=4, embedding_concurrency=1, job_progress_interval=0
    ) as service:
        document = await service.upload("long.txt", long_text(150))

        async def embedding() -> dict[str, Any] | None:
            job = (await service.http.get(f"{service.base}/v1/jobs/{document['job_id']}")).json()
            moving = job["stage"] == "embedding" and job["progress"]["done"] > 0
            return job if moving and job["progress"]["done"] < job["progress"]["total"] else None

        await until(embedding, every=0.01)
        deleted = await service.http.delete(f"{service.base}/v1/documents/{document['id']}")
        assert deleted.status_code == 204
        # one worker: once the next document is done, the deleted one's job has ended
        assert (await service.finish("note.txt", TEXT))["state"] == "succeeded"
        results = await service.http.post(
            f"{service.base}/v1/search",
            json={"query": "river stone lantern", "collection": "limits", "top_k": 50},
        )
        assert results.status_code == 200, results.text
        assert {r["filename"] for r in results.json()["results"]} == {"note.txt"}
        missing = await service.http.get(f"{service.base}/v1/documents/{document['id']}")
        assert missing.status_code == 404
    store = VectorStore.from_settings(service.settings, dimensions=EMBEDDING_DIMENSIONS)
    try:
        assert await store.count("limits", document["id"]) == 0
    finally:
        await store.close()


def hanging_embeddings(http: httpx.AsyncClient, release: asyncio.Event) -> Starlette:
    """The real embedding server (``http``'s base URL), except that /v1/embeddings does not
    answer until ``release`` (a hung upstream)."""

    async def forward(request: Request) -> Response:
        if request.url.path == "/v1/embeddings":
            await release.wait()
            return Response(b"{}", 503, media_type="application/json")
        answer = await http.request(
            request.method, request.url.path, params=request.query_params,
            content=await request.body(), headers={"content-type": "application/json"},
        )  # fmt: skip
        return Response(answer.content, answer.status_code, media_type="application/json")

    paths = ["/health", "/slots", "/props", "/tokenize", "/v1/embeddings", "/metrics"]
    return Starlette(routes=[Route(p, forward, methods=["GET", "POST"]) for p in paths])


async def test_a_job_without_progress_is_failed_while_its_lease_is_kept(
    service_factory: Any, embedding_server: RunningServer
) -> None:
    release = asyncio.Event()
    async with (
        httpx.AsyncClient(base_url=embedding_server.url, timeout=30) as http,
        serve_app(hanging_embeddings(http, release)) as hung,
    ):
        try:
            async with service_factory(
                embedding_urls=[hung], job_stall_seconds=2, job_lease_seconds=1
            ) as service:
                job = await service.finish("note.txt", TEXT, within=60)
        finally:
            release.set()
    assert job["state"] == "failed"
    assert job["error"]["type"] == "stalled"
    assert "no progress for 2 s" in job["error"]["message"]
    assert job["attempts"] == 1


async def test_stale_temporary_uploads_are_removed_at_start(
    service_factory: Any, tmp_path: Path
) -> None:
    tmp = tmp_path / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    stale, fresh = tmp / "upload-old.part", tmp / "upload-new.part"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"an upload in progress")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    async with service_factory():
        assert not stale.exists()
        assert fresh.exists()
