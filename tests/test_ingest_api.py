"""Ingestion end to end through the HTTP API: real files, the real embedding llama-server, Qdrant
local mode, and the registry on SQLite (and on PostgreSQL in the last test)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.ocr.scan import image_only_pdf
from ingest.parsing.doc import soffice
from ingest.parsing.ocr import tesseract
from ingest.registry.testing import postgres_unreachable, scratch_database
from rag.api.app import create_app
from rag.core.settings import Settings
from tests.conftest import FIXTURES, RunningServer, serve_app, service_settings, wait_job
from tests.test_parsing import PAGE_SENTENCES, encrypt, make_docx, make_pdf

pytestmark = pytest.mark.integration

CSV_TEXT = "city;country;river\nLyon;France;Rhône\nCologne;Germany;Rhine\nVienna;Austria;Danube\n"
MARKDOWN = (
    "# Kitchen manual\n\n## Oven\n\nPreheat the oven to 220 degrees for bread.\n\n"
    "## Fridge\n\nKeep the fridge at four degrees Celsius.\n"
)
TEXT = b"The lighthouse keeper logs every passing ship in a leather-bound book.\n"


class Client:
    def __init__(self, http: httpx.AsyncClient, base: str, settings: Settings) -> None:
        self.http = http
        self.base = base
        self.settings = settings

    async def upload(
        self, name: str, data: bytes, collection: str = "default", **extra: Any
    ) -> httpx.Response:
        return await self.http.post(
            f"{self.base}/v1/documents",
            data={"collection": collection, **extra},
            files={"file": (name, io.BytesIO(data))},
        )

    async def ingest(self, name: str, data: bytes, collection: str = "default") -> dict[str, Any]:
        response = await self.upload(name, data, collection)
        assert response.status_code == 202, response.text
        (document,) = response.json()["documents"]
        job = await wait_job(self.http, self.base, document["job_id"])
        assert job["state"] == "succeeded", job
        return document  # type: ignore[no-any-return]

    async def search(self, query: str, **body: Any) -> list[dict[str, Any]]:
        response = await self.http.post(
            f"{self.base}/v1/search", json={"query": query, "top_k": 5, **body}
        )
        assert response.status_code == 200, response.text
        return response.json()["results"]  # type: ignore[no-any-return]


async def _client(settings: Settings) -> AsyncIterator[Client]:
    app = create_app(settings, run_workers=True)
    async with serve_app(app) as base, httpx.AsyncClient(timeout=60) as http:
        yield Client(http, base, settings)


@pytest.fixture(scope="module")
async def client(
    base_settings: Settings,
    embedding_server: RunningServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Client]:
    settings = service_settings(
        base_settings, tmp_path_factory.mktemp("ingest"), embedding_server, max_upload_bytes=200_000
    )
    async for client in _client(settings):
        yield client


async def test_pdf_pages_are_kept_and_a_sentence_finds_its_document(client: Client) -> None:
    document = await client.ingest("animals.pdf", make_pdf())
    info = (await client.http.get(f"{client.base}/v1/documents/{document['id']}")).json()
    assert info["status"] == "ready"
    assert info["pages"] == 3
    assert info["chunks"] >= 3
    await client.ingest("notes.txt", TEXT)  # a second document the search must rank lower
    (top, *_) = await client.search(PAGE_SENTENCES[1])
    assert top["document_id"] == document["id"]
    assert top["filename"] == "animals.pdf"
    assert top["page"] == 2


async def test_docx_headings_and_table_rows_reach_the_payload(client: Client) -> None:
    document = await client.ingest("guide.docx", make_docx())
    results = await client.search("Kittiwake wingspan diet", filter={"document_id": document["id"]})
    texts = " ".join(result["text"] for result in results)
    assert "Kittiwake" in texts and "Herring gull" in texts
    headings = [tuple(result["heading_path"]) for result in results]
    assert any("Gulls" in path for path in headings), headings


async def test_csv_markdown_and_text(client: Client) -> None:
    csv_doc = await client.ingest("rivers.csv", CSV_TEXT.encode("latin-1"))
    md_doc = await client.ingest("kitchen.md", MARKDOWN.encode())
    (top, *_) = await client.search("Which river flows through Vienna?")
    assert top["document_id"] == csv_doc["id"]
    assert "city" in top["text"] and "Danube" in top["text"]
    (top, *_) = await client.search("temperature of the fridge")
    assert top["document_id"] == md_doc["id"]
    assert top["heading_path"][-1] == "Fridge"


async def _count(client: Client, document_id: str) -> int:
    results = await client.search(
        "anything", top_k=100, filter={"document_id": document_id}, retrieval="dense"
    )
    return len(results)


async def test_reupload_changes_nothing_and_delete_leaves_nothing(client: Client) -> None:
    data = make_pdf(("Quokkas smile on Rottnest Island.", "Wombats produce cubic droppings."))
    document = await client.ingest("marsupials.pdf", data)
    chunks = await _count(client, document["id"])
    assert chunks >= 2

    again = await client.upload("marsupials-copy.pdf", data)
    assert again.status_code == 200
    (same,) = again.json()["documents"]
    assert same["id"] == document["id"] and same["created"] is False
    assert await _count(client, document["id"]) == chunks

    deleted = await client.http.delete(f"{client.base}/v1/documents/{document['id']}")
    assert deleted.status_code == 204
    assert await _count(client, document["id"]) == 0
    missing = await client.http.get(f"{client.base}/v1/documents/{document['id']}")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    ("name", "data", "status", "error_type"),
    [
        ("empty.txt", b"", 400, "invalid_request"),
        ("picture.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, 415, "unsupported_type"),
        ("report.pdf", b"just some plain text pretending to be a PDF\n", 415, "unsupported_type"),
        ("big.txt", b"word " * 50_000, 413, "payload_too_large"),
    ],
)
async def test_bad_uploads_get_a_clear_4xx(
    client: Client, name: str, data: bytes, status: int, error_type: str
) -> None:
    response = await client.upload(name, data)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["message"] and error["request_id"]
    assert (await client.http.get(f"{client.base}/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("locked.pdf", lambda: encrypt(make_pdf(), "secret"), "encrypted"),
        ("broken.pdf", lambda: make_pdf()[:400], "corrupt"),
    ],
)
async def test_unreadable_pdfs_end_as_failed_jobs_with_a_reason(
    client: Client, name: str, make: Any, reason: str
) -> None:
    response = await client.upload(name, make())
    assert response.status_code == 202, response.text
    (document,) = response.json()["documents"]
    job = await wait_job(client.http, client.base, document["job_id"])
    assert job["state"] == "failed"
    assert job["error"]["type"] == reason
    assert job["error"]["message"]
    info = (await client.http.get(f"{client.base}/v1/documents/{document['id']}")).json()
    assert info["status"] == "failed"

    retried = await client.http.post(f"{client.base}/v1/jobs/{document['job_id']}/retry")
    assert retried.status_code == 202
    job = await wait_job(client.http, client.base, document["job_id"])
    assert job["state"] == "failed" and job["error"]["type"] == reason


async def test_bad_requests_elsewhere(client: Client) -> None:
    http, base = client.http, client.base
    assert (await http.get(f"{base}/v1/jobs/nope")).status_code == 404
    bad_name = await client.upload("a.txt", b"hello", collection="no spaces allowed")
    assert bad_name.status_code == 400
    bad_meta = await client.upload("a.txt", b"hello", metadata="[1, 2]")
    assert bad_meta.status_code == 400
    not_multipart = await http.post(f"{base}/v1/documents", json={"file": "x"})
    assert not_multipart.status_code == 400
    no_collection = await http.post(f"{base}/v1/search", json={"query": "x", "collection": "nope"})
    assert no_collection.status_code == 404
    empty_query = await http.post(f"{base}/v1/search", json={"query": ""})
    assert empty_query.status_code == 422
    page = (await http.get(f"{base}/v1/documents", params={"limit": 2})).json()
    assert len(page["documents"]) == 2 and page["next_cursor"]
    rest = await http.get(f"{base}/v1/documents", params={"cursor": page["next_cursor"]})
    assert rest.status_code == 200
    assert (await http.get(f"{base}/v1/documents", params={"cursor": "garbage"})).status_code == 400


async def test_postgresql_registry(
    base_settings: Settings,
    embedding_server: RunningServer,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    reason = await postgres_unreachable(postgres_url)
    if reason:
        pytest.skip(reason)
    async with scratch_database(postgres_url) as database:
        settings = service_settings(
            base_settings,
            tmp_path,
            embedding_server,
            database_url=database.url,
            database_schema=database.schema,
        )
        async for client in _client(settings):
            document = await client.ingest("animals.pdf", make_pdf())
            (top, *_) = await client.search(PAGE_SENTENCES[2])
            assert top["document_id"] == document["id"] and top["page"] == 3


async def test_a_refused_file_stores_nothing_of_its_upload(client: Client) -> None:
    """Files stream into temporary blob files; one refused file refuses the whole upload and
    removes every temporary file, so nothing is registered and nothing is left on disk."""
    blobs = client.settings.data_dir / "blobs"
    before = sorted(p.relative_to(blobs) for p in blobs.rglob("*") if p.is_file())
    good = make_docx()
    response = await client.http.post(
        f"{client.base}/v1/documents",
        data={"collection": "refused"},
        files=[
            ("file", ("guide.docx", io.BytesIO(good))),
            ("file", ("picture.png", io.BytesIO(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8))),
        ],
    )
    assert response.status_code == 415, response.text
    assert response.json()["error"]["filename"] == "picture.png"
    after = sorted(p.relative_to(blobs) for p in blobs.rglob("*") if p.is_file())
    assert after == before
    listed = await client.http.get(f"{client.base}/v1/documents", params={"collection": "refused"})
    assert listed.json()["documents"] == []


@pytest.mark.skipif(soffice() is None, reason="LibreOffice (soffice) is not installed")
async def test_legacy_doc_is_ingested_and_found(client: Client) -> None:
    data = (FIXTURES / "doc" / "olefile-test-ole-file.doc").read_bytes()
    document = await client.ingest("legacy.doc", data)
    info = (await client.http.get(f"{client.base}/v1/documents/{document['id']}")).json()
    assert info["content_type"] == "application/msword" and info["chunks"] == 1
    (top, *_) = await client.search("OLE file saved as Word 97-2003")
    assert top["document_id"] == document["id"] and top["filename"] == "legacy.doc"


@pytest.mark.skipif(tesseract() is None, reason="Tesseract is not installed")
async def test_a_scanned_page_among_text_pages_is_searchable_with_its_page(client: Client) -> None:
    pages = ("Ostriches run faster than horses.", *PAGE_SENTENCES[1:])
    mixed = image_only_pdf(make_pdf(pages), dpi=200, pages=[1])
    document = await client.ingest("scanned-first-page.pdf", mixed)
    (top, *_) = await client.search("Which bird runs faster than a horse?")
    assert top["document_id"] == document["id"]
    assert top["page"] == 1 and "Ostriches" in top["text"]


async def test_malformed_multipart_bodies_get_a_400(client: Client) -> None:
    url = f"{client.base}/v1/documents"
    many = [("file", (f"n{n}.txt", io.BytesIO(b"note\n"))) for n in range(21)]
    too_many = await client.http.post(url, files=many)
    assert too_many.status_code == 400, too_many.text
    assert "too many files" in too_many.json()["error"]["message"]
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    broken = await client.http.post(url, content=b"--xyz\r\nnonsense\r\n\r\n", headers=headers)
    assert broken.status_code == 400, broken.text
    assert broken.json()["error"]["type"] == "invalid_request"
    no_boundary = await client.http.post(
        url, content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert no_boundary.status_code == 400
