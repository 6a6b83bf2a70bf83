"""Slot-aware balancing against round-robin and nginx ``least_conn`` under a mixed load of short
and long generations.

    .venv/bin/python -m bench.pool.policies [--clients 6] [--requests 8] [--repeats 8]
    .venv/bin/python -m bench.pool.policies --load open [--rate 3] [--arrivals 100] [--repeats 4]

Two llama-servers (SmolLM2-135M, ``-np 2``: four slots in all). ``--clients`` closed-loop clients
(more than there are slots, so requests must wait somewhere) each send ``--requests`` streamed
``/completion`` requests; a quarter are long (48 tokens), the rest short (4 tokens), in a fixed
seeded order that every variant gets identically. Variants: ``rag balancer`` with the ``slots``
policy (with early handoff, its default, and without), ``rag balancer --policy round-robin``, and
Debian's nginx with ``least_conn``, run in turn (A B C D, then D C B A, ...) against the same
servers. Figures: mean and p99 time to first token, and total throughput, each as a ratio to nginx
``least_conn`` from the same run, with a 95% bootstrap interval over the rounds (single rounds
differ by several percent on these machines).

With closed-loop clients, mean response time is fixed by throughput (Little's law: clients /
requests per second), so a scheduler can only lose on mean TTFT here (idle slots between
requests, its own CPU), not win; what slot-awareness can win is the tail (p99). ``--load open``
sends ``--arrivals`` requests at seeded Poisson times, ``--rate`` per second, whatever is still
running (many independent users, as a service sees them), the same schedule for every variant;
there queueing decides the mean too. Results: docs/benchmarks/pool-policies.{json,md,png}, and
pool-policies-open.* for the open load.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from bench.pool.common import (
    Sample,
    balancer,
    closed_loop,
    llama_servers,
    machine,
    mean,
    nginx_least_conn,
    open_loop,
    orders,
    p99,
    paired_ratio_interval,
    publish,
    stop_on_sigterm,
    summary,
    workdir,
)

SHORT_TOKENS = 4
LONG_TOKENS = 48


def _body(rng: random.Random, label: str) -> dict[str, Any]:
    """One request of the mix: a quarter long, the rest short."""
    long = rng.random() < 0.25
    return {
        "prompt": f"{label}: write about the number {rng.randint(1, 10_000)}.",
        "n_predict": LONG_TOKENS if long else SHORT_TOKENS,
        "ignore_eos": True,
        "cache_prompt": False,
        "temperature": 0.0,
    }


def workloads(clients: int, requests: int, seed: int = 7) -> list[list[dict[str, Any]]]:
    """Closed loop: ``requests`` bodies for each of ``clients`` clients."""
    rng = random.Random(seed)
    return [
        [_body(rng, f"Client {client}, request {index}") for index in range(requests)]
        for client in range(clients)
    ]


def arrivals(count: int, rate: float, seed: int = 11) -> list[tuple[float, dict[str, Any]]]:
    """Open loop: ``count`` bodies at Poisson times, ``rate`` per second on average."""
    rng = random.Random(seed)
    schedule, at = [], 0.0
    for index in range(count):
        at += rng.expovariate(rate)
        schedule.append((at, _body(rng, f"Request {index}")))
    return schedule


Variant = Callable[[list[str], Path], AbstractContextManager[str]]
VARIANTS: dict[str, Variant] = {
    "slots (rag balancer)": lambda ups, tmp: balancer(ups, workdir=tmp, policy="slots"),
    "slots, no handoff (rag balancer)": lambda ups, tmp: balancer(
        ups, workdir=tmp, policy="slots", handoff_tokens="0"
    ),
    "round-robin (rag balancer)": lambda ups, tmp: balancer(ups, workdir=tmp, policy="round-robin"),
    "least_conn (nginx)": lambda ups, tmp: nginx_least_conn(ups, workdir=tmp),
}
BASELINE = "least_conn (nginx)"


def verdict(ratio: float, interval: tuple[float, float]) -> str:
    """A TTFT ratio against the baseline: met (<= 1), within noise (the interval reaches 1) or
    missed."""
    if ratio <= 1.0:
        return "met"
    return "within noise" if interval[0] <= 1.0 else "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None, help="default: 8 closed, 4 open")
    parser.add_argument("--load", choices=["closed", "open"], default="closed")
    parser.add_argument("--rate", type=float, default=3.0, help="open load: requests per second")
    parser.add_argument("--arrivals", type=int, default=100, help="open load: requests per round")
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 8 if args.load == "closed" else 4
    stop_on_sigterm()
    loads = workloads(args.clients, args.requests)
    schedule = arrivals(args.arrivals, args.rate)
    samples: dict[str, list[Sample]] = {name: [] for name in VARIANTS}
    rounds: dict[str, list[list[float]]] = {name: [] for name in VARIANTS}  # TTFTs per round
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    tokens: dict[str, int] = dict.fromkeys(VARIANTS, 0)
    env = machine()
    with (
        workdir("bench-pool-policies-") as tmp,
        llama_servers(2, slots=2, ctx=1024, workdir=tmp) as upstreams,
    ):
        for order in orders(VARIANTS, args.repeats):
            for name in order:
                with VARIANTS[name](upstreams, tmp) as url:
                    if args.load == "closed":
                        got, wall = asyncio.run(closed_loop(url, loads))
                    else:
                        got, wall = asyncio.run(open_loop(url, schedule))
                samples[name].extend(got)
                rounds[name].append([s.ttft for s in got if s.ok])
                walls[name].append(wall)
                tokens[name] += sum(s.tokens for s in got)
                print(f"{name}: {wall:.1f} s, {sum(not s.ok for s in got)} errors", flush=True)
    result: dict[str, Any] = {
        "benchmark": "pool-policies",
        "machine": env,
        "load": args.load,
        **(
            {"clients": args.clients, "requests_per_client": args.requests}
            if args.load == "closed"
            else {"rate_per_s": args.rate, "arrivals": args.arrivals}
        ),
        "repeats": args.repeats,
        "short_tokens": SHORT_TOKENS,
        "long_tokens": LONG_TOKENS,
        "variants": {},
    }
    for name, got in samples.items():
        ttft = [s.ttft for s in got if s.ok]
        short = [s.ttft for s in got if s.ok and s.tokens <= SHORT_TOKENS]
        result["variants"][name] = {
            "ttft_s": summary(ttft),
            "ttft_short_s": summary(short),
            "throughput_tokens_per_s": tokens[name] / sum(walls[name]),
            "wall_s": walls[name],
            "errors": sum(not s.ok for s in got),
        }
    base = result["variants"][BASELINE]
    for name, v in result["variants"].items():
        v["ratio_to_least_conn_95ci"] = {
            "ttft_mean": paired_ratio_interval(rounds[name], rounds[BASELINE], mean),
            "ttft_p99": paired_ratio_interval(rounds[name], rounds[BASELINE], p99),
        }
    rows = []
    ratios: dict[str, dict[str, float]] = {"mean TTFT": {}, "p99 TTFT": {}, "throughput": {}}
    for name, v in result["variants"].items():
        v["ratio_to_least_conn"] = {
            "ttft_mean": v["ttft_s"]["mean"] / base["ttft_s"]["mean"],
            "ttft_p99": v["ttft_s"]["p99"] / base["ttft_s"]["p99"],
            "ttft_short_p99": v["ttft_short_s"]["p99"] / base["ttft_short_s"]["p99"],
            "throughput": v["throughput_tokens_per_s"] / base["throughput_tokens_per_s"],
        }
        r = v["ratio_to_least_conn"]
        ci = v["ratio_to_least_conn_95ci"]
        ratios["mean TTFT"][name] = r["ttft_mean"]
        ratios["p99 TTFT"][name] = r["ttft_p99"]
        ratios["throughput"][name] = r["throughput"]
        rows.append(
            f"| {name} | {v['ttft_s']['mean']:.3f} | {r['ttft_mean']:.2f} "
            f"({ci['ttft_mean'][0]:.2f}-{ci['ttft_mean'][1]:.2f}) | "
            f"{v['ttft_s']['p99']:.2f} | {r['ttft_p99']:.2f} "
            f"({ci['ttft_p99'][0]:.2f}-{ci['ttft_p99'][1]:.2f}) | {v['ttft_short_s']['p99']:.2f} | "
            f"{r['ttft_short_p99']:.2f} | {v['throughput_tokens_per_s']:.1f} | "
            f"{r['throughput']:.2f} | {v['errors']} |"
        )
    slots = result["variants"]["slots (rag balancer)"]["ratio_to_least_conn"]
    slots_ci = result["variants"]["slots (rag balancer)"]["ratio_to_least_conn_95ci"]
    result["goals"] = {
        "mean_ttft_no_worse_than_least_conn": verdict(slots["ttft_mean"], slots_ci["ttft_mean"]),
        "p99_ttft_better_than_least_conn": verdict(slots["ttft_p99"], slots_ci["ttft_p99"]),
    }
    command = ".venv/bin/python -m bench.pool.policies"
    if args.load == "closed":
        if (args.clients, args.requests, args.repeats) != (6, 8, 8):
            command += (
                f" --clients {args.clients} --requests {args.requests} --repeats {args.repeats}"
            )
        load = f"{args.clients} closed-loop clients x {args.requests} streamed /completion requests"
    else:
        command += " --load open"
        if (args.rate, args.arrivals, args.repeats) != (3.0, 100, 4):
            command += f" --rate {args.rate} --arrivals {args.arrivals} --repeats {args.repeats}"
        load = (
            f"open loop: {args.arrivals} streamed /completion requests at seeded Poisson times, "
            f"{args.rate:g} per second"
        )
    lines = [
        "# Pool benchmark: slot-aware vs round-robin vs nginx least_conn",
        "",
        f"Command: `{command}`",
        "",
        f"Two llama-servers (SmolLM2-135M, -np 2, -t 1; 4 slots). {load} (1 in 4 long: "
        f"{LONG_TOKENS} tokens, else {SHORT_TOKENS}), the same seeded sequence for every "
        f"variant, {args.repeats} alternating rounds per variant. TTFT in seconds; "
        "ratios against nginx least_conn from the same run (below 1 is better for TTFT, "
        "above 1 for throughput), with 95% bootstrap intervals over the rounds.",
        "",
        "| variant | mean TTFT | ratio | p99 TTFT | ratio | p99 TTFT short | ratio "
        "| tokens/s | ratio | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "Goals (slots policy): mean TTFT no worse than least_conn: "
        f"**{result['goals']['mean_ttft_no_worse_than_least_conn']}** "
        f"({slots['ttft_mean']:.2f}); p99 TTFT better: "
        f"**{result['goals']['p99_ttft_better_than_least_conn']}** ({slots['ttft_p99']:.2f}). "
        "(met: ratio at or below 1; within noise: above 1 but the interval reaches 1; "
        "missed: the whole interval above 1.)",
    ]
    name = "pool-policies" if args.load == "closed" else "pool-policies-open"
    publish(name, result, lines, env=env, title="Policies / nginx least_conn",
            groups=ratios, ylabel="ratio to least_conn")  # fmt: skip


if __name__ == "__main__":
    main()
