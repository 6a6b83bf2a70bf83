"""Added latency of ``rag balancer`` against calling one llama-server directly (and, for scale,
against nginx in front of the same server).

    .venv/bin/python -m bench.pool.latency [--rounds 200]

Each round sends the same request directly, through the balancer and through nginx, in a rotating
order, one at a time, so all three see the same machine state. Two requests: ``/tokenize`` (no
slot: the bare proxy path) and a one-token ``/completion`` with a cached prompt (the slot path:
choice, lease, release). Results: docs/benchmarks/pool-latency.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx

from bench.pool.common import (
    TIMEOUT,
    balancer,
    llama_servers,
    machine,
    nginx_least_conn,
    publish,
    stop_on_sigterm,
    summary,
    workdir,
)

REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "tokenize": ("/tokenize", {"content": "The quick brown fox jumps over the lazy dog."}),
    "completion_1_token": (
        "/completion",
        {"prompt": "Hello", "n_predict": 1, "cache_prompt": True},
    ),
}


async def measure(targets: dict[str, str], rounds: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {r: {t: [] for t in targets} for r in REQUESTS}
    names = list(targets)
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        for request, (path, body) in REQUESTS.items():
            for _ in range(5):
                for name in names:
                    (await http.post(f"{targets[name]}{path}", json=body)).raise_for_status()
            for round_ in range(rounds):
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in order:
                    started = time.perf_counter()
                    response = await http.post(f"{targets[name]}{path}", json=body)
                    elapsed = time.perf_counter() - started
                    response.raise_for_status()
                    times[request][name].append(elapsed * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    stop_on_sigterm()
    with (
        workdir("bench-pool-latency-") as tmp,
        llama_servers(1, slots=2, ctx=1024, workdir=tmp) as (upstream,),
        balancer([upstream], workdir=tmp) as via_balancer,
        nginx_least_conn([upstream], workdir=tmp) as via_nginx,
    ):
        targets = {"direct": upstream, "balancer": via_balancer, "nginx": via_nginx}
        env = machine()
        times = asyncio.run(measure(targets, args.rounds))
    result: dict[str, Any] = {"benchmark": "pool-latency", "machine": env, "rounds": args.rounds}
    rows = []
    ratios: dict[str, dict[str, float]] = {}
    for request, by_target in times.items():
        stats = {name: summary(values) for name, values in by_target.items()}
        direct = stats["direct"]
        entry: dict[str, Any] = {"ms": stats}
        for proxy in ("balancer", "nginx"):
            added = {q: stats[proxy][q] - direct[q] for q in ("p50", "p99", "mean")}
            ratio = {q: stats[proxy][q] / direct[q] for q in ("p50", "p99")}
            entry[f"{proxy}_added_ms"] = added
            entry[f"{proxy}_ratio"] = ratio
            rows.append(
                f"| {request} | {proxy} | {direct['p50']:.2f} | {stats[proxy]['p50']:.2f} | "
                f"{added['p50']:+.2f} | {ratio['p50']:.3f} | {direct['p99']:.2f} | "
                f"{stats[proxy]['p99']:.2f} | {added['p99']:+.2f} | {ratio['p99']:.3f} |"
            )
            ratios.setdefault(f"{request} p50", {})[proxy] = ratio["p50"]
            ratios.setdefault(f"{request} p99", {})[proxy] = ratio["p99"]
        result[request] = entry
    goal = result["completion_1_token"]["balancer_added_ms"]["p50"]
    result["goal_added_p50_under_2ms"] = goal < 2.0
    lines = [
        "# Pool benchmark: added latency of the balancer",
        "",
        "Command: `.venv/bin/python -m bench.pool.latency"
        + (f" --rounds {args.rounds}`" if args.rounds != 200 else "`"),
        "",
        f"One llama-server (SmolLM2-135M, -np 2, -t 1); {args.rounds} rounds, each request "
        "sent "
        "directly, through `rag balancer` and through nginx (least_conn, keepalive) in a "
        "rotating order, one at a time. Times in ms; ratio = proxied / direct, same run.",
        "",
        "| request | via | direct p50 | via p50 | added p50 | ratio p50 | direct p99 | via p99 "
        "| added p99 | ratio p99 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Goal: added p50 under 2 ms on the slot path: **{'met' if goal < 2 else 'missed'}** "
        f"({goal:+.2f} ms).",
    ]
    publish("pool-latency", result, lines, env=env, title="Latency through a proxy / direct",
            groups=ratios, ylabel="ratio to direct")  # fmt: skip


if __name__ == "__main__":
    main()
