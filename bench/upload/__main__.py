"""Memory of uploads and of a burst of ingestion, against baselines measured in the same run.

    .venv/bin/python -m bench.upload [--mb 500] [--docs 200]

1. **One large upload.** Writes a ``--mb`` MB text file, then uploads it (streamed by the client,
   one multipart request) to two fresh processes in turn, sampling each one's RSS every 10 ms
   from ``/proc``: ``rag serve`` (the service: the body streams into a temporary blob file) and
   the baseline, the previous upload path (``bench/upload/baseline.py``: Starlette's spooled form,
   then the whole file read into memory for detection). Reported: each one's RSS growth during
   the upload (peak minus the RSS just before), and the ratio service / baseline. Goal: the
   service grows by at most 50 MB for 500 MB.
2. **200 documents at once.** Starts one embedding llama-server and ``rag run`` on it (no
   generation children), uploads ``--docs`` SciFact abstracts in concurrent requests of 20 files
   and samples the RSS of the service process and of its parse processes until every document is
   ready. Reported: idle and peak RSS of each, the ratio peak / idle, and the bound they are held
   to (see docs/benchmarks/upload.md).

Results go to docs/benchmarks/upload.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.ingest.__main__ import start_service, write_corpus
from rag.core.runtime.children import embedding_args
from rag.core.runtime.prepare import prepare_runtime
from rag.core.runtime.supervisor import ChildSpec, Supervisor, free_port
from rag.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "benchmarks"
TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=600.0, pool=60.0)
MB = 1_000_000
GOAL_MB = 50


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def parse_children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = Path(stat.parent, "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


class Sampler:
    """RSS of a process (and, optionally, of its parse processes) every ``interval`` seconds."""

    def __init__(self, pid: int, *, children: bool = False, interval: float = 0.01) -> None:
        self.pid, self.children, self.interval = pid, children, interval
        self.samples: list[tuple[float, int, int]] = []  # (t, own KiB, children KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._kids: list[int] = []

    def _run(self) -> None:
        started, last_scan = time.perf_counter(), 0.0
        while not self._stop.is_set():
            now = time.perf_counter()
            if self.children and now - last_scan > 0.5:  # a replaced process gets a new pid
                self._kids, last_scan = parse_children(self.pid), now
            kids = sum(rss_kib(kid) for kid in self._kids)
            self.samples.append((now - started, rss_kib(self.pid), kids))
            time.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def make_file(path: Path, size: int) -> None:
    line = b"The quick brown fox jumps over the lazy dog near the riverbank at dawn. "
    block = (line * (MB // len(line) + 1))[:MB]
    with path.open("wb") as out:
        for _ in range(size // MB):
            out.write(block)


def multipart_body(path: Path, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="collection"\r\n\r\nbench\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{path.name}"\r\nContent-Type: text/plain\r\n\r\n'
    ).encode()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            yield block
    yield f"\r\n--{boundary}--\r\n".encode()


def wait_listening(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the process under test exited at start")
        try:
            httpx.get(f"{base}/openapi.json", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{base} did not start")


def one_upload(command: list[str], env: dict[str, str], path: Path, port: int) -> dict[str, Any]:
    """Upload ``path`` once to a fresh process started by ``command``; its RSS figures."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_listening(base, process)
        small = {"file": ("warm.txt", b"warm up the route and its imports\n")}
        httpx.post(f"{base}/v1/documents", files=small, timeout=TIMEOUT).raise_for_status()
        time.sleep(1.0)
        before = rss_kib(process.pid)
        boundary = "bench-upload-boundary-7f3a"
        with Sampler(process.pid) as sampler:
            started = time.perf_counter()
            response = httpx.post(
                f"{base}/v1/documents",
                content=multipart_body(path, boundary),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
                timeout=TIMEOUT,
            )
            seconds = time.perf_counter() - started
        response.raise_for_status()
        peak = max(own for _, own, _ in sampler.samples)
        return {
            "rss_before_mb": round(before * 1024 / MB, 1),
            "rss_peak_mb": round(peak * 1024 / MB, 1),
            "growth_mb": round((peak - before) * 1024 / MB, 1),
            "seconds": round(seconds, 2),
            "trace": [(round(t, 2), round(own * 1024 / MB, 1)) for t, own, _ in sampler.samples],
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def large_upload(work: Path, size_mb: int) -> dict[str, Any]:
    path = work / f"large-{size_mb}mb.txt"
    make_file(path, size_mb * MB)
    results = {}
    for variant in ("service", "baseline"):
        data_dir = work / f"data-{variant}"
        data_dir.mkdir()
        port = free_port()
        env = {
            **os.environ,
            "RAG_PORT": str(port),
            "RAG_DATA_DIR": str(data_dir),
            "RAG_MAX_UPLOAD_BYTES": str(2 * size_mb * MB),
            "RAG_LOG_LEVEL": "warning",
            "RAG_AUTH": "open",  # loopback only: the benchmark measures memory, not keys
            "TMPDIR": str(work),  # Starlette's spool files of the baseline
        }
        if variant == "service":
            command = [sys.executable, "-m", "rag", "serve"]
        else:
            command = [sys.executable, "-m", "bench.upload.baseline", str(port), str(data_dir)]
        results[variant] = one_upload(command, env, path, port)
    path.unlink()
    return results


async def burst(work: Path, docs: int) -> dict[str, Any]:
    """Ingest ``docs`` documents uploaded at once; RSS of the service and its parse processes."""
    settings = Settings()
    runtime = prepare_runtime(settings)
    files = write_corpus(work, docs)
    spec = ChildSpec(
        "bench-embedding", "embedding",
        embedding_args(settings, runtime.embedding_model), free_port(),
    )  # fmt: skip
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        supervisor = Supervisor(runtime.llama_server, [spec], logs_dir=work / "logs", http=http)
        await supervisor.start()
        try:
            if not await supervisor.wait_healthy(120):
                raise RuntimeError("the embedding server did not start")
            process, base = start_service(spec.url, work / "data-burst", settings)
            try:
                await asyncio.sleep(2.0)
                idle_own = rss_kib(process.pid)
                idle_kids = sum(rss_kib(kid) for kid in parse_children(process.pid))
                with Sampler(process.pid, children=True, interval=0.05) as sampler:
                    started = time.perf_counter()
                    await _upload_all(http, base, files)
                    await _wait_ready(http, base, docs)
                    seconds = time.perf_counter() - started
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
        finally:
            await supervisor.stop()
    peak_own = max(own for _, own, _ in sampler.samples)
    peak_kids = max(kids for _, _, kids in sampler.samples)
    return {
        "documents": docs,
        "seconds": round(seconds, 1),
        "service_idle_mb": round(idle_own * 1024 / MB, 1),
        "service_peak_mb": round(peak_own * 1024 / MB, 1),
        "parse_idle_mb": round(idle_kids * 1024 / MB, 1),
        "parse_peak_mb": round(peak_kids * 1024 / MB, 1),
        "ratio_peak_idle": round((peak_own + peak_kids) / max(1, idle_own + idle_kids), 3),
        "workers": settings.workers,
        "parse_processes": settings.parse_processes,
        "parse_memory_mb": settings.parse_memory_mb,
        "max_files_per_upload": settings.max_files_per_upload,
        "trace": [
            (round(t, 1), round(own * 1024 / MB, 1), round(kids * 1024 / MB, 1))
            for t, own, kids in sampler.samples[::10]
        ],
    }


async def _upload_all(http: httpx.AsyncClient, base: str, files: list[Path]) -> None:
    async def one(group: list[Path]) -> None:
        response = await http.post(
            f"{base}/v1/documents",
            data={"collection": "bench"},
            files=[("file", (p.name, p.read_bytes())) for p in group],
        )
        response.raise_for_status()

    groups = [files[i : i + 20] for i in range(0, len(files), 20)]
    await asyncio.gather(*(one(group) for group in groups))


async def _wait_ready(http: httpx.AsyncClient, base: str, docs: int) -> None:
    while True:
        listing = await http.get(
            f"{base}/v1/documents", params={"collection": "bench", "limit": docs}
        )
        documents = listing.json()["documents"]
        failed = [d for d in documents if d["status"] == "failed"]
        if failed:
            raise RuntimeError(f"{failed[0]['filename']} failed: {failed[0]['error']}")
        if len(documents) == docs and all(d["status"] == "ready" for d in documents):
            return
        await asyncio.sleep(0.5)


def write(result: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    traces = {name: result["large_upload"][name].pop("trace") for name in ("service", "baseline")}
    burst_trace = result["burst"].pop("trace")
    (OUT / "upload.json").write_text(json.dumps(result, indent=2) + "\n")
    large, many = result["large_upload"], result["burst"]
    rows = [
        f"| {name} | {large[name]['rss_before_mb']} | {large[name]['rss_peak_mb']} | "
        f"**{large[name]['growth_mb']}** | {large[name]['seconds']} |"
        for name in ("service", "baseline")
    ]
    (OUT / "upload.md").write_text(
        f"# Upload and ingestion memory\n\n`{result['command']}` ({result['date_utc']}, "
        f"{result['cpus']} cores, load average {result['load_average']}).\n\n"
        f"## One {result['upload_mb']} MB upload\n\n"
        "RSS of the process that receives it (sampled every 10 ms):\n\n"
        "| receiver | RSS before (MB) | peak (MB) | growth (MB) | seconds |\n"
        "| --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"
        f"**Growth ratio service / baseline: {result['growth_ratio']}**; goal: the service grows "
        f"by at most {GOAL_MB} MB ({'met' if result['goal_met'] else 'NOT met'}). The baseline is "
        "the previous upload path (Starlette's spooled form, then `await upload.read()` of the "
        "whole file for detection), in the same run.\n\n"
        f"## {many['documents']} documents at once\n\n"
        f"SciFact abstracts in {many['documents'] // many['max_files_per_upload']} concurrent "
        f"requests of {many['max_files_per_upload']} files, `rag run` with its defaults "
        f"({many['workers']} job loops, {many['parse_processes']} parse process, "
        f"RAG_PARSE_MEMORY_MB={many['parse_memory_mb']}); all ready after {many['seconds']} s.\n\n"
        "| process | idle RSS (MB) | peak RSS (MB) |\n| --- | --- | --- |\n"
        f"| service (API, job loops) | {many['service_idle_mb']} | {many['service_peak_mb']} |\n"
        f"| parse processes | {many['parse_idle_mb']} | {many['parse_peak_mb']} |\n\n"
        f"Ratio peak / idle (both together): **{many['ratio_peak_idle']}**.\n\n"
        "The bound: queued jobs are registry rows and blob files, never memory, so the service "
        "holds at most `RAG_WORKERS` documents' chunks at once (each job's chunk texts and one "
        "upsert group of vectors), plus about 1 MiB per file of an upload in flight "
        "(`RAG_MAX_FILES_PER_UPLOAD` files per request); each parse process is capped at "
        "`RAG_PARSE_MEMORY_MB` of data segment by RLIMIT_DATA (a document that needs more fails "
        "with `too_large`, the process is replaced). With the defaults: service idle + 8 "
        "documents' chunks, parse processes <= 1 x 1024 MiB.\n"
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
    for name, trace in traces.items():
        left.plot([t for t, _ in trace], [mb for _, mb in trace], label=name)
    left.set_xlabel("seconds")
    left.set_ylabel("RSS (MB)")
    left.set_title(f"{result['upload_mb']} MB upload")
    left.legend()
    right.plot([t for t, _, _ in burst_trace], [a for _, a, _ in burst_trace], label="service")
    right.plot([t for t, _, _ in burst_trace], [b for _, _, b in burst_trace], label="parse")
    right.set_xlabel("seconds")
    right.set_title(f"{many['documents']} documents at once")
    right.legend()
    figure.tight_layout()
    figure.savefig(OUT / "upload.png", dpi=100)


def main(size_mb: int, docs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rag-bench-upload-") as tmp:
        work = Path(tmp)
        large = large_upload(work, size_mb)
        many = asyncio.run(burst(work, docs))
    service, baseline = large["service"]["growth_mb"], large["baseline"]["growth_mb"]
    return {
        "benchmark": "upload",
        "command": f".venv/bin/python -m bench.upload --mb {size_mb} --docs {docs}",
        "upload_mb": size_mb,
        "large_upload": large,
        "growth_ratio": round(service / baseline, 4) if baseline > 0 else None,
        "goal_met": service <= GOAL_MB * size_mb / 500,
        "burst": many,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="Size of the large upload in MB.")
    parser.add_argument("--docs", type=int, default=200, help="Documents uploaded at once.")
    args = parser.parse_args()
    outcome = main(args.mb, args.docs)
    write(outcome)
    print(json.dumps({k: v for k, v in outcome.items()}, indent=2))
