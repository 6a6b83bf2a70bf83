"""``rag ingest PATH...``: upload files or folders to a running service and follow their jobs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rag.cli.http import auth_headers, error_text
from rag.cli.progress import console

SUFFIXES = {".pdf", ".docx", ".csv", ".txt", ".md", ".markdown", ".text"}
TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=120.0, pool=5.0)
POLL_WINDOW = 32
"""Pending jobs polled per round."""


def collect(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return files


def ingest(
    paths: list[Path],
    *,
    url: str,
    collection: str,
    metadata: dict[str, Any] | None,
    timeout: float,
    api_key: str | None = None,
) -> int:
    """Upload, then poll the jobs until all finish; return the number of failures."""
    files = collect(paths)
    failures: list[tuple[str, str]] = []
    jobs: dict[str, str] = {}  # job id -> filename
    with httpx.Client(base_url=url, timeout=TIMEOUT, headers=auth_headers(api_key)) as client:
        for path in files:
            data: dict[str, str] = {"collection": collection}
            if metadata:
                data["metadata"] = json.dumps(metadata)
            with path.open("rb") as handle:
                response = client.post(
                    "/v1/documents", data=data, files={"file": (path.name, handle)}
                )
            if response.status_code >= 400:
                failures.append((path.name, error_text(response)))
                continue
            for document in response.json()["documents"]:
                if document.get("job_id"):
                    jobs[document["job_id"]] = document["filename"]
        unchanged = len(files) - len(failures) - len(jobs)
        deadline = time.monotonic() + timeout
        with Progress(
            TextColumn("ingesting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[current]}"), console=console,
        ) as bar:  # fmt: skip
            task = bar.add_task("jobs", total=len(jobs), current="")
            pending = dict(jobs)
            while pending and time.monotonic() < deadline:
                # the oldest first, a window at a time: workers claim jobs oldest first, so
                # these finish next, and a large upload does not cost a request per job per round
                for job_id, filename in list(pending.items())[:POLL_WINDOW]:
                    job = client.get(f"/v1/jobs/{job_id}").json()
                    if job["state"] in ("succeeded", "failed"):
                        del pending[job_id]
                        bar.advance(task)
                        if job["state"] == "failed":
                            failures.append((filename, _job_error(job)))
                    else:
                        progress = job.get("progress") or {}
                        bar.update(
                            task,
                            current=f"{filename}: {job.get('stage') or job['state']} "
                            f"{progress.get('done', 0)}/{progress.get('total', 0)}",
                        )
                time.sleep(0.3)
            for filename in pending.values():
                failures.append((filename, f"not finished after {timeout:.0f} s"))
    done = len(jobs) - sum(1 for name, _ in failures if name in jobs.values())
    console.print(
        f"{len(files)} files: {done} ingested, {unchanged} already present, {len(failures)} failed"
    )
    for filename, reason in failures:
        console.print(f"  [red]failed[/red] {filename}: {reason}")
    return len(failures)


def _job_error(job: dict[str, Any]) -> str:
    error = job.get("error") or {}
    return f"{error.get('type', 'error')}: {error.get('message', 'unknown')}"
