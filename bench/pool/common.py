"""What the pool benchmarks share: real llama-servers, the balancer and nginx as processes on
loopback ports, a streaming load client that measures time to first token, and the writers of
the JSON / Markdown / PNG results.

Everything listens on 127.0.0.1 only, every loop is bounded, every process is stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from rag.core.processes import die_with_parent
from rag.core.runtime.build import ensure_llama_server
from rag.core.runtime.models import ensure_generation_model
from rag.core.runtime.supervisor import free_port
from rag.core.settings import Settings

OUT_DIR = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=30.0, pool=300.0)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "mean": mean(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
    }


def paired_ratio_interval(
    rounds: Sequence[Sequence[float]],
    base_rounds: Sequence[Sequence[float]],
    stat: Callable[[Sequence[float]], float],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """95% bootstrap interval of ``stat(variant) / stat(baseline)``, resampling whole rounds.

    Round ``i`` of the variant and of the baseline ran next to each other (the same load, minutes
    apart), so they are drawn together; samples within a round are not independent, so rounds,
    not requests, are the unit drawn.
    """
    rng = random.Random(seed)
    count = min(len(rounds), len(base_rounds))
    ratios = []
    for _ in range(resamples):
        picks = [rng.randrange(count) for _ in range(count)]
        variant = [v for i in picks for v in rounds[i]]
        base = [v for i in picks for v in base_rounds[i]]
        ratios.append(stat(variant) / stat(base))
    return percentile(ratios, 2.5), percentile(ratios, 97.5)


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def p50(values: Sequence[float]) -> float:
    return percentile(values, 50)


def p99(values: Sequence[float]) -> float:
    return percentile(values, 99)


def orders(names: Iterable[str], repeats: int) -> Iterator[list[str]]:
    """The variants' running order per round, alternating (A B C, then C B A, ...), so that no
    variant always runs first or last on a machine whose state drifts."""
    listed = list(names)
    for repeat in range(repeats):
        yield listed if repeat % 2 == 0 else listed[::-1]


def gpu_names() -> list[str]:
    """The GPUs ``nvidia-smi`` lists (none without it)."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def machine(label: str | None = None) -> dict[str, Any]:
    """The machine a run measured: CPUs, GPUs, load, date, and a name for its result files
    (``label``, else the first GPU's name, else none: the CPU results keep their names)."""
    gpus = gpu_names()
    name = label or (gpus[0] if gpus else None)
    return {
        "cpus": os.cpu_count(),
        "gpus": gpus,
        "label": name,
        "slug": _slug(name) if name else None,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _slug(name: str) -> str:
    """``NVIDIA H200`` -> ``h200``: the short name for file names."""
    cleaned = "".join(c if c.isalnum() else " " for c in name.lower().replace("nvidia", " "))
    return "-".join(cleaned.split()) or "machine"


@dataclass(frozen=True)
class ServerOptions:
    """Which llama-server, which models, and the GPU/CPU flags of the servers a benchmark runs
    (``add_server_options``): the same commands run on the 2-core machine and a GPU host."""

    llama_server: Path | None = None  # default: the prepared runtime's (built if need be)
    model: Path | None = None  # generation GGUF; default: SmolLM2 from the runtime
    embedding_model: Path | None = None  # default: all-MiniLM-L6-v2 from the runtime
    ngl: int | None = None  # -ngl (layers on the GPU); None: not passed
    threads: int = 1  # -t
    slots: int | None = None  # -np; None: the benchmark's own default
    ctx: int | None = None  # -c (all slots together); None: the benchmark's own default
    extra: tuple[str, ...] = ()  # more llama-server arguments

    def binary(self) -> Path:
        return self.llama_server or ensure_llama_server(Settings())

    def generation(self) -> Path:
        return self.model or ensure_generation_model(Settings())

    def embedding(self) -> Path:
        if self.embedding_model is not None:
            return self.embedding_model
        from rag.core.runtime.models import ensure_embedding_model

        return ensure_embedding_model(Settings())

    def flags(self) -> list[str]:
        flags = ["-t", str(self.threads)]
        if self.ngl is not None:
            flags += ["-ngl", str(self.ngl)]
        return [*flags, *self.extra]

    def describe(self) -> str:
        return " ".join(self.flags())


def add_server_options(parser: Any, *, machine_label: bool = True) -> None:
    """The options every pool benchmark takes for its llama-servers (``server_options``)."""
    group = parser.add_argument_group("llama-server")
    group.add_argument("--llama-server", type=Path, help="binary (default: the runtime's)")
    group.add_argument("--model", type=Path, help="generation GGUF (default: SmolLM2)")
    group.add_argument("--embedding-model", type=Path, help="embedding GGUF (default: MiniLM)")
    group.add_argument("--ngl", type=int, help="-ngl: layers on the GPU (e.g. 99)")
    group.add_argument("--threads", type=int, default=1, help="-t per server (default 1)")
    group.add_argument("--slots", type=int, help="-np per server (default: the benchmark's)")
    group.add_argument("--ctx", type=int, help="-c per server (default: the benchmark's)")
    group.add_argument(
        "--server-arg", action="append", default=[], help="one more llama-server argument"
    )
    if machine_label:
        group.add_argument("--machine", help="machine name for the results (default: GPU name)")


def server_options(args: Any) -> ServerOptions:
    return ServerOptions(
        llama_server=args.llama_server, model=args.model, embedding_model=args.embedding_model,
        ngl=args.ngl, threads=args.threads, slots=args.slots, ctx=args.ctx,
        extra=tuple(args.server_arg),
    )  # fmt: skip


def command_line(module: str) -> str:
    """The command that ran, for the results: ``python -m MODULE ARGS``."""
    return " ".join(["python -m", module, *sys.argv[1:]])


# --- processes ----------------------------------------------------------------------------------


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that every context manager stops its processes."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@dataclass
class Proc:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def _wait_ready(url: str, path: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{url} exited; see {log}:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{url}{path}").status_code == 200:
                    return
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after 180 s; see {log}")


@contextlib.contextmanager
def _serving(proc: Proc) -> Iterator[str]:
    """``proc``'s URL once its /health answers 200; the process is stopped on the way out."""
    try:
        _wait_ready(proc.url, "/health", proc.process, proc.log)
        yield proc.url
    finally:
        _stop([proc])


def _stop(procs: Sequence[Proc]) -> None:
    for proc in procs:
        if proc.process.poll() is None:
            proc.process.terminate()
    for proc in procs:
        try:
            proc.process.wait(15)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait()


def cpu_list(text: str | None) -> set[int] | None:
    """``"0,2-5"`` -> ``{0, 2, 3, 4, 5}`` (taskset's list syntax); ``None`` stays ``None``."""
    if not text:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


@contextlib.contextmanager
def on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """Run the block (and the processes it starts, which inherit it) on ``cpus`` only; the
    block's end restores this process's own set. ``None``: unchanged."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def llama_servers(
    count: int,
    *,
    slots: int,
    ctx: int,
    workdir: Path,
    cache_ram_mib: int | None = None,
    options: ServerOptions | None = None,
    embedding: bool = False,
    args: Sequence[str] = (),
) -> Iterator[list[str]]:
    """``count`` real llama-servers (``-np slots -c ctx``, the model, binary and flags of
    ``options``: SmolLM2-135M and ``-t 1`` by default; ``options.slots`` / ``options.ctx`` win
    over the benchmark's ``slots`` / ``ctx``; ``--cache-ram`` when ``cache_ram_mib`` is given,
    else llama-server's default of 8 GiB). ``embedding``: the embedding model; ``args``: the
    benchmark's own extra arguments."""
    options = options or ServerOptions()
    binary = options.binary()
    model = options.embedding() if embedding else options.generation()
    slots = options.slots or slots
    ctx = options.ctx or ctx
    procs: list[Proc] = []
    try:
        for index in range(count):
            port = free_port()
            log = workdir / f"llama-{index}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(binary), "-m", str(model), "-c", str(ctx), "-np", str(slots),
                     *options.flags(), *args,
                     "--no-webui", "--host", "127.0.0.1", "--port", str(port),
                     *(["--cache-ram", str(cache_ram_mib)] if cache_ram_mib is not None else [])],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=die_with_parent,
                )  # fmt: skip
            procs.append(Proc(f"http://127.0.0.1:{port}", process, log))
        for proc in procs:
            _wait_ready(proc.url, "/health", proc.process, proc.log)
        yield [proc.url for proc in procs]
    finally:
        _stop(procs)


@contextlib.contextmanager
def balancer(
    upstreams: Sequence[str], *, workdir: Path, policy: str = "slots", **env: str
) -> Iterator[str]:
    """``rag balancer`` in its own process, exactly as an operator starts it."""
    port = free_port()
    # python -m rag.balancer: the same options and settings as `rag balancer`, importing only
    # the balancer's dependencies (a GPU host runs the source tree with a few wheels)
    command = [sys.executable, "-m", "rag.balancer", "--port", str(port)]
    command += ["--policy", policy]
    for url in upstreams:
        command += ["--upstream", url]
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    environment = {
        **os.environ,
        "RAG_BALANCER_LOG_LEVEL": os.environ.get("RAG_BALANCER_LOG_LEVEL", "warning"),
        "PYTHONPATH": path,
    }
    environment.update({f"RAG_BALANCER_{k.upper()}": v for k, v in env.items()})
    log = workdir / f"balancer-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=environment, preexec_fn=die_with_parent,
        )  # fmt: skip
    with _serving(Proc(f"http://127.0.0.1:{port}", process, log)) as url:
        PIDS[url] = process.pid
        try:
            yield url
        finally:
            PIDS.pop(url, None)


PIDS: dict[str, int] = {}
"""The process behind each URL ``balancer`` serves, for ``cpu_seconds``."""


def cpu_seconds(url: str) -> float:
    """User + system CPU time so far of the process serving ``url`` (``balancer``'s), 0 when
    it is unknown or ``/proc`` is absent."""
    pid = PIDS.get(url)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream llama {{
        least_conn;
{servers}
        keepalive 32;
        keepalive_timeout 4s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://llama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_next_upstream error timeout non_idempotent;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_least_conn(upstreams: Sequence[str], *, workdir: Path) -> Iterator[str]:
    """Debian's nginx with ``least_conn`` over ``upstreams``, in the foreground, then stopped."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise RuntimeError("nginx not found: apt-get install -y nginx")
    conf_dir = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))
    port = free_port()
    servers = "\n".join(
        f"        server {u.removeprefix('http://')} max_fails=0;" for u in upstreams
    )
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=conf_dir, port=port, servers=servers))
    log = conf_dir / "stdout.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-p", str(conf_dir), "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    with _serving(Proc(f"http://127.0.0.1:{port}", process, log)) as url:
        yield url


# --- load ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    ttft: float  # seconds to the first streamed token
    total: float  # seconds to the end of the answer
    tokens: int  # tokens generated
    prompt_tokens: int
    cached_tokens: int  # prompt tokens re-used from the KV cache
    ok: bool


async def stream_completion(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Sample:
    """One streamed /completion; the first ``data:`` event with content is the first token."""
    started = time.perf_counter()
    ttft = float("nan")
    last: dict[str, Any] = {}
    try:
        async with http.stream("POST", f"{url}/completion", json={**body, "stream": True}) as r:
            if r.status_code != 200:
                await r.aread()
                return Sample(float("nan"), time.perf_counter() - started, 0, 0, 0, False)
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if ttft != ttft and event.get("content"):
                    ttft = time.perf_counter() - started
                last = event
    except httpx.HTTPError:
        return Sample(float("nan"), time.perf_counter() - started, 0, 0, 0, False)
    timings = last.get("timings", {})
    return Sample(
        ttft if ttft == ttft else time.perf_counter() - started,
        time.perf_counter() - started,
        int(timings.get("predicted_n", 0)),
        int(timings.get("prompt_n", 0)) + int(timings.get("cache_n", 0)),
        int(timings.get("cache_n", 0)),
        bool(last.get("stop")),
    )


async def closed_loop(
    url: str, workloads: Sequence[Sequence[dict[str, Any]]]
) -> tuple[list[Sample], float]:
    """One client per workload, each sending its requests one after the other."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as http:
        started = time.perf_counter()

        async def client(bodies: Sequence[dict[str, Any]]) -> list[Sample]:
            return [await stream_completion(http, url, body) for body in bodies]

        results = await asyncio.gather(*(client(bodies) for bodies in workloads))
        wall = time.perf_counter() - started
    return [sample for samples in results for sample in samples], wall


async def open_loop(
    url: str, schedule: Sequence[tuple[float, dict[str, Any]]]
) -> tuple[list[Sample], float]:
    """Each request sent at its own time (seconds from the start), whatever is still running."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as http:
        started = time.perf_counter()

        async def send_at(offset: float, body: dict[str, Any]) -> Sample:
            await asyncio.sleep(max(0.0, started + offset - time.perf_counter()))
            return await stream_completion(http, url, body)

        results = await asyncio.gather(*(send_at(offset, body) for offset, body in schedule))
        wall = time.perf_counter() - started
    return list(results), wall


def samples_dict(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    return [asdict(s) for s in samples]


# --- results ------------------------------------------------------------------------------------


def publish(
    name: str,
    result: dict[str, Any],
    lines: list[str],
    *,
    env: dict[str, Any],
    title: str,
    groups: dict[str, dict[str, float]],
    ylabel: str,
) -> None:
    """Write ``name``.json, .md (``lines`` and the machine they ran on) and .png, and print."""
    if env.get("slug"):
        name = f"{name}-{env['slug']}"  # a GPU host's results beside the 2-core machine's
    gpus = f", GPUs: {', '.join(env['gpus'])}" if env.get("gpus") else ""
    label = f"{env['label']}: " if env.get("label") else ""
    markdown = "\n".join(
        [
            *lines,
            "",
            f"Machine: {label}{env['cpus']} CPUs{gpus}, load average at start "
            f"{env['load_average_at_start']}, {env['date_utc']}.",
            "",
        ]
    )
    paths = write_results(name, result, markdown)
    plot = bar_plot(name, title, groups, ylabel)
    print(markdown)
    print("wrote", *paths, plot or "(no plot)")


def write_results(name: str, result: dict[str, Any], markdown: str) -> list[Path]:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    json_path = OUT_DIR / f"{name}.json"
    md_path = OUT_DIR / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown)
    return [json_path, md_path]


def bar_plot(
    name: str, title: str, groups: dict[str, dict[str, float]], ylabel: str
) -> Path | None:
    """Grouped bars (one group per metric, one bar per variant); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return None
    metrics = list(groups)
    variants = list(next(iter(groups.values())))
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, variant in enumerate(variants):
        xs = [m + i * width for m in range(len(metrics))]
        ax.bar(xs, [groups[metric][variant] for metric in metrics], width, label=variant)
    ax.set_xticks([m + width * (len(variants) - 1) / 2 for m in range(len(metrics))], metrics)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.legend()
    fig.tight_layout()
    path = OUT_DIR / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)
