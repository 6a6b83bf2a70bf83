"""Saturation: many concurrent streamed generations over two llama-servers, through
``rag balancer`` against the best static split (each client pinned to one server, evenly).

    python -m bench.pool.streams [--streams 64 128] [--tokens 128] [--requests 3] [--rounds 1]
        [--llama-server PATH --model GGUF --ngl 99 --slots 32 --ctx 32768 --machine NAME]

Per stream count and round: every client sends ``--requests`` streamed chat completions of
``--tokens`` tokens (``ignore_eos``) one after the other, first directly (client ``i`` to server
``i % 2``), then through the balancer (alternating the order each round). Measured: aggregate
generated tokens per second (tokens / wall time of the whole load), TTFT p50/p99, answers with a
5xx status or broken off, and from the balancer's ``/metrics`` before and after: buffer waits
(count, > 0.1 s, > 1 s), early handoffs, failovers, upstream errors. Goals (issue 13): tok/s
through it >= 0.97 of direct, TTFT p99 <= 1.2x direct, no 5xx. Results:
docs/benchmarks/pool-streams[-MACHINE].{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.pool.common import (
    add_server_options,
    balancer,
    command_line,
    cpu_seconds,
    llama_servers,
    machine,
    orders,
    percentile,
    publish,
    server_options,
    stop_on_sigterm,
    workdir,
)

PROMPT = "Write a long story about a lighthouse keeper and the sea."
COUNTERS = {
    "buffer_waits": "rag_pool_buffer_wait_seconds_count",
    "early_handoffs": "rag_pool_early_handoffs_total",
    "failovers": "rag_pool_failovers_total",
    "upstream_errors": "rag_pool_upstream_errors_total",
    "rejected": "rag_pool_rejected_total",
}


@dataclass
class Stream:
    status: int
    ttft: float
    tokens: int
    complete: bool
    wave: int = 0  # 0: the client's first request, 1: its second, ...


_CONTENT = re.compile(rb'"content":"[^"]')  # a delta with text (the first is role only)
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')


async def chat_stream(http: httpx.AsyncClient, url: str, tokens: int) -> Stream:
    """One streamed chat completion; TTFT = time to the first delta with text. The bytes are
    searched, not parsed event by event: one client process reads every stream of the load,
    and JSON-decoding ~4k events a second made it the slowest part (its own delays showed up
    as gaps between a stream's end and the client's next request)."""
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    started = time.perf_counter()
    ttft, tail = float("nan"), b""
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Stream(response.status_code, ttft, 0, False)
            async for chunk in response.aiter_raw():
                seen = tail + chunk  # an event may span two chunks
                if ttft != ttft and _CONTENT.search(seen):
                    ttft = time.perf_counter() - started
                tail = seen[-4096:]
    except httpx.HTTPError:
        return Stream(0, ttft, 0, False)
    counts = _COMPLETION_TOKENS.findall(tail)  # the usage event, just before [DONE]
    done = b"data: [DONE]" in tail
    return Stream(200, ttft, int(counts[-1]) if counts else 0, done)


async def run_load(urls: list[str], clients: int, requests: int, tokens: int) -> dict[str, Any]:
    """``clients`` closed-loop clients, client ``i`` on ``urls[i % len(urls)]``.

    Each client has its own connection (an ``httpx.AsyncClient`` of one): one shared pool of
    64 connections cost the client process O(connections) of work per request and release
    (httpcore assigns requests to connections by scanning them all), so when 64 streams ended
    together their clients sent their next requests over ~0.8 s instead of at once. Kept-alive
    connections (the balancer's) made that pool fuller than closed ones (llama-server's), so
    the client slowed the balancer's runs more than the direct ones."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=120.0)

    # made before the clock starts: each builds an SSL context (~15 ms), 64 of them ~1 s
    https = [httpx.AsyncClient(timeout=timeout, limits=limits) for _ in range(clients)]

    async def client(i: int) -> list[Stream]:
        got = []
        async with https[i] as http:
            for wave in range(requests):
                stream = await chat_stream(http, urls[i % len(urls)], tokens)
                stream.wave = wave
                got.append(stream)
        return got

    started = time.perf_counter()
    results = await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - started
    streams = [s for got in results for s in got]
    ok = [s for s in streams if s.status == 200 and s.complete]
    ttfts = [s.ttft for s in ok if s.ttft == s.ttft]
    first = [s.ttft for s in ok if s.ttft == s.ttft and s.wave == 0]
    later = [s.ttft for s in ok if s.ttft == s.ttft and s.wave > 0]
    return {
        "wall_s": wall,
        "requests": len(streams),
        "tokens": sum(s.tokens for s in ok),
        "tok_per_s": sum(s.tokens for s in ok) / wall,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "ttft_mean_s": sum(ttfts) / len(ttfts) if ttfts else None,
        # the first wave starts all at once; later requests follow their client's last one
        "ttft_first_p50_s": percentile(first, 50) if first else None,
        "ttft_first_p99_s": percentile(first, 99) if first else None,
        "ttft_later_p50_s": percentile(later, 50) if later else None,
        "ttft_later_p99_s": percentile(later, 99) if later else None,
        "status_5xx": sum(1 for s in streams if s.status >= 500),
        "broken": sum(1 for s in streams if s.status == 0 or (s.status == 200 and not s.complete)),
        "other_errors": sum(1 for s in streams if 0 < s.status < 500 and s.status != 200),
    }


def pool_counters(url: str) -> dict[str, float]:
    """The balancer's counters and its buffer-wait histogram buckets, summed over labels."""
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rag_pool_buffer_wait_seconds_bucket":
                key = f"wait_le_{sample.labels['le']}"
                found[key] = found.get(key, 0.0) + sample.value
            else:
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


def erase_slots(upstreams: list[str], slots: int) -> None:
    """Empty every slot of every server (``POST /slots/{id}?action=erase``), so that each phase
    starts from the same server state. Without it, a phase that follows another found each slot
    holding the last phase's prompt and answer: llama-server then spent ~110 ms on its first
    step and ~2 ms per request taken after it (seen in its log on the H200), while the first
    phase of the run started on empty slots: the phase order, not the route, set the figures."""
    with httpx.Client(timeout=30.0) as http:
        for url in upstreams:
            for slot in range(slots):
                http.post(f"{url}/slots/{slot}", params={"action": "erase"}).raise_for_status()


def settle(url: str, within: float = 10.0) -> float:
    """Wait until the balancer at ``url`` sees every upstream idle (no slot busy, its own or
    other clients'), so that each phase starts from the same state: right after the direct phase
    the balancer's last poll may still count the direct clients' slots as busy. Seconds taken."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        upstreams = httpx.get(f"{url}/v1/pool", timeout=10.0).json()["upstreams"]
        if all(u["slots_busy"] == 0 for u in upstreams):
            break
        time.sleep(0.05)
    return time.monotonic() - started


def waits(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    result = {name: delta.get(metric, 0.0) for name, metric in COUNTERS.items()}
    # time to the first chunk as the balancer saw it (its request sent -> the first chunk,
    # which for a chat stream is the role-only delta, before the first text): JSON only
    count = delta.get("rag_pool_time_to_first_token_seconds_count", 0.0)
    result["upstream_ttft_mean_s"] = (
        delta.get("rag_pool_time_to_first_token_seconds_sum", 0.0) / count if count else 0.0
    )
    total = delta.get("wait_le_+Inf", 0.0)
    result["buffer_waits_over_0.1s"] = total - delta.get("wait_le_0.1", 0.0)
    result["buffer_waits_over_1s"] = total - delta.get("wait_le_1.0", 0.0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 24])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=3, help="per client, back to back")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--logs", type=Path, help="copy the servers' logs into this folder")
    add_server_options(parser)
    args = parser.parse_args()
    options = server_options(args)
    stop_on_sigterm()
    env = machine(args.machine)
    slots = options.slots or 8
    ctx = options.ctx or slots * 512
    result: dict[str, Any] = {
        "benchmark": "pool-streams", "machine": env, "command": command_line("bench.pool.streams"),
        "servers": 2, "slots_per_server": slots, "ctx_per_server": ctx,
        "flags": options.describe(), "tokens": args.tokens, "requests_per_client": args.requests,
        "runs": {},
    }  # fmt: skip
    with (
        workdir("bench-pool-streams-") as tmp,
        llama_servers(
            2,
            slots=slots,
            ctx=ctx,
            workdir=tmp,
            options=options,
            args=["--slot-save-path", str(tmp)],  # needed by the erase action; nothing saved
        ) as upstreams,
        balancer(upstreams, workdir=tmp, buffer_size="1024", buffer_timeout="120") as via,
    ):
        asyncio.run(run_load(upstreams, 4, 1, 4))  # warm-up
        asyncio.run(run_load([via], 4, 1, 4))
        for streams in args.streams:
            runs: dict[str, list[dict[str, Any]]] = {"direct": [], "balancer": []}
            for names in orders(["direct", "balancer"], args.rounds):
                for name in names:
                    erase_slots(upstreams, slots)
                    settled = settle(via)
                    before, cpu = pool_counters(via), cpu_seconds(via)
                    urls = upstreams if name == "direct" else [via]
                    got = asyncio.run(run_load(urls, streams, args.requests, args.tokens))
                    if name == "balancer":
                        got["pool"] = waits(before, pool_counters(via))
                        # the balancer's CPU over the load: near 1 core per second of wall time
                        # means its one process is the bound
                        got["balancer_cpu_s"] = cpu_seconds(via) - cpu
                        got["settled_s"] = settled
                    runs[name].append(got)
                    print(streams, name, json.dumps(got), flush=True)
            result["runs"][str(streams)] = runs
        if args.logs is not None:  # llama-servers' and the balancer's logs, for a diagnosis
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("*.log"):
                shutil.copy(log, args.logs / log.name)
    report(result, args)


def _sum(runs: list[dict[str, Any]], key: str) -> float:
    return sum(float(r[key]) for r in runs)


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    rows, groups, waves = [], {}, []
    summary: dict[str, Any] = {}
    for streams, runs in result["runs"].items():
        direct, via = runs["direct"], runs["balancer"]
        tps = (
            _sum(via, "tokens")
            / _sum(via, "wall_s")
            / (_sum(direct, "tokens") / _sum(direct, "wall_s"))
        )
        p99 = max(r["ttft_p99_s"] for r in via) / max(r["ttft_p99_s"] for r in direct)
        fivexx = int(_sum(via, "status_5xx") + _sum(via, "broken"))
        pool = {k: sum(r["pool"][k] for r in via) for k in via[0]["pool"]}
        cores = _sum(via, "balancer_cpu_s") / _sum(via, "wall_s")  # balancer CPU per wall second
        goals = {"tok_s_ratio_ge_0.97": tps >= 0.97, "ttft_p99_le_1.2x": p99 <= 1.2,
                 "no_5xx": fivexx == 0}  # fmt: skip
        summary[streams] = {"tok_s_ratio": tps, "ttft_p99_ratio": p99, "5xx_or_broken": fivexx,
                            "pool": pool, "balancer_cores": cores, "goals": goals}  # fmt: skip
        d, b = direct[-1], via[-1]
        rows.append(
            f"| {streams} | {d['tok_per_s']:.0f} | {b['tok_per_s']:.0f} | **{tps:.3f}** | "
            f"{d['ttft_p50_s'] * 1000:.0f} / {d['ttft_p99_s'] * 1000:.0f} | "
            f"{b['ttft_p50_s'] * 1000:.0f} / {b['ttft_p99_s'] * 1000:.0f} | **{p99:.2f}** | "
            f"{int(_sum(direct, 'status_5xx') + _sum(direct, 'broken'))} / {fivexx} | "
            f"{pool['buffer_waits']:.0f} ({pool['buffer_waits_over_0.1s']:.0f}, "
            f"{pool['buffer_waits_over_1s']:.0f}) | {pool['early_handoffs']:.0f} | "
            f"{pool['failovers']:.0f} | {cores:.2f} | "
            f"{'met' if all(goals.values()) else 'missed'} |"
        )
        groups[f"{streams} streams"] = {"tok/s": tps, "TTFT p99": p99}
        if d.get("ttft_first_p50_s") is not None and d.get("ttft_later_p50_s") is not None:
            waves.append(
                f"| {streams} | " + " | ".join(
                    f"{r[f'ttft_{w}_p50_s'] * 1000:.0f} / {r[f'ttft_{w}_p99_s'] * 1000:.0f}"
                    for r in (d, b) for w in ("first", "later")
                ) + " |"
            )  # fmt: skip
    result["summary"] = summary
    lines = [
        "# Pool benchmark: saturation with streamed generations",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Two llama-servers (`-np {result['slots_per_server']} -c {result['ctx_per_server']} "
        f"{result['flags']}`), {result['tokens']}-token streamed chat completions "
        f"(`ignore_eos`), {result['requests_per_client']} per client back to back; direct = "
        "the clients split evenly over the two servers (the best static split); balancer = "
        "all through `rag balancer` (slots policy, buffer 1024). tok/s = generated tokens / "
        "wall time of the whole load; TTFT in ms (p50 / p99); ratios balancer / direct, the "
        "last round shown, ratios over all rounds. Balancer CPU: its process's user + system "
        "CPU seconds per second of load (1.00 = one core busy: its one process is the bound).",
        "",
        "| streams | direct tok/s | balancer tok/s | ratio | direct TTFT p50/p99 | "
        "balancer TTFT p50/p99 | p99 ratio | 5xx+broken direct / balancer | buffer waits "
        "(> 0.1 s, > 1 s) | early handoffs | failovers | balancer CPU (cores) | goals |",
        "|" + " ---: |" * 12 + " --- |",
        *rows,
        "",
        "Goals (issue 13): tok/s ratio >= 0.97, TTFT p99 <= 1.2x direct, no 5xx.",
    ]
    if waves:
        lines += [
            "",
            "TTFT p50 / p99 in ms by wave (first: every client's first request, sent all at "
            "once; later: the requests each client sends when its last one ends), last round:",
            "",
            "| streams | direct first | direct later | balancer first | balancer later |",
            "| ---: | ---: | ---: | ---: | ---: |",
            *waves,
        ]
    publish("pool-streams", result, lines, env=result["machine"],
            title="Saturation: balancer / direct (best static split)", groups=groups,
            ylabel="ratio balancer / direct")  # fmt: skip


if __name__ == "__main__":
    main()
