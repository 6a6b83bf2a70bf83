"""`rag ingest` against a served app: folders are walked, jobs followed, failures explained."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from rag.api.app import create_app
from rag.cli.ingest import collect, ingest
from rag.core.settings import Settings
from tests.conftest import RunningServer, serve_app, service_settings

pytestmark = pytest.mark.integration


def test_collect_walks_folders_and_refuses_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("# A\n\ntext\n")
    (tmp_path / "b.txt").write_text("text")
    (tmp_path / "c.bin").write_bytes(b"\0\1")
    assert [p.name for p in collect([tmp_path])] == ["b.txt", "a.md"]
    with pytest.raises(FileNotFoundError):
        collect([tmp_path / "nope"])


async def test_ingest_uploads_follows_jobs_and_reports_failures(
    base_settings: Settings, embedding_server: RunningServer, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tides.md").write_text("# Tides\n\nThe moon's gravity pulls the oceans into tides.\n")
    (docs / "volcano.txt").write_text("Magma rises through vents and erupts as lava.\n")
    (docs / "locked.pdf").write_bytes(b"%PDF-1.7\n" + b"garbage" * 20)
    settings = service_settings(base_settings, tmp_path / "data", embedding_server)
    async with serve_app(create_app(settings, run_workers=True)) as base:
        failures = await asyncio.to_thread(
            ingest, [docs], url=base, collection="cli", metadata={"team": "geo"}, timeout=120
        )
        assert failures == 1  # the broken PDF, as a failed job
        async with httpx.AsyncClient() as http:
            listed = (await http.get(f"{base}/v1/documents", params={"collection": "cli"})).json()
        states = {d["filename"]: d["status"] for d in listed["documents"]}
        assert states == {"tides.md": "ready", "volcano.txt": "ready", "locked.pdf": "failed"}
        assert all(d["metadata"] == {"team": "geo"} for d in listed["documents"])
        again = await asyncio.to_thread(
            ingest, [docs / "tides.md"], url=base, collection="cli", metadata=None, timeout=60
        )
        assert again == 0
