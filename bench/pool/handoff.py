"""How long a freed llama-server slot stays idle before the next request starts in it.

    .venv/bin/python -m bench.pool.handoff [--repeats 2]

Runs the closed-loop load of ``bench.pool.policies`` through ``rag balancer`` with early handoff
(its default), without it (``RAG_BALANCER_HANDOFF_TOKENS=0``) and through nginx ``least_conn``,
on two llama-servers started with timestamped logs (``LLAMA_ARG_LOG_TIMESTAMPS``). From each
server's log it pairs every slot release with the next slot launch and reports the gap: the time
a slot sat free while a request was waiting somewhere. A request already queued inside
llama-server starts in the same turn of its loop; one sent after the slot freed waits for the
running decode step. Figures: median and p90 gap, and mean prompt evaluation time, with the
median gap as a ratio to nginx. Results: docs/benchmarks/pool-handoff.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from bench.pool.common import (
    balancer,
    closed_loop,
    llama_servers,
    machine,
    nginx_least_conn,
    orders,
    percentile,
    publish,
    stop_on_sigterm,
    workdir,
)
from bench.pool.policies import workloads

_STAMP = re.compile(rb"^(\d+)\.(\d+)\.(\d+)\.(\d+) ")
_PROMPT_EVAL = re.compile(rb"prompt eval time =\s+([\d.]+) ms")

Variant = Callable[[list[str], Path], AbstractContextManager[str]]
VARIANTS: dict[str, Variant] = {
    "rag balancer, early handoff": lambda ups, tmp: balancer(ups, workdir=tmp),
    "rag balancer, no handoff": lambda ups, tmp: balancer(ups, workdir=tmp, handoff_tokens="0"),
    "nginx least_conn": lambda ups, tmp: nginx_least_conn(ups, workdir=tmp),
}
BASELINE = "nginx least_conn"


def _seconds(line: bytes) -> float | None:
    """A log line's ``minutes.seconds.ms.us`` timestamp in seconds."""
    match = _STAMP.match(line)
    if match is None:
        return None
    minutes, seconds, millis, micros = (int(part) for part in match.groups())
    return minutes * 60 + seconds + millis / 1e3 + micros / 1e6


def slot_gaps(log: bytes) -> tuple[list[float], list[float]]:
    """(release → next launch gaps in ms, prompt evaluation times in ms) from one server's log."""
    gaps: list[float] = []
    prompt_ms: list[float] = []
    released: float | None = None
    for line in log.splitlines():
        at = _seconds(line)
        if at is None:
            continue
        if b"release:" in line:
            released = at
        elif b"launch_slot_" in line and released is not None:
            gaps.append((at - released) * 1000)
            released = None
        elif (found := _PROMPT_EVAL.search(line)) is not None:
            prompt_ms.append(float(found.group(1)))
    return gaps, prompt_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    stop_on_sigterm()
    os.environ["LLAMA_ARG_LOG_TIMESTAMPS"] = "1"  # inherited by the llama-servers
    loads = workloads(6, 8)
    gaps: dict[str, list[float]] = {name: [] for name in VARIANTS}
    prompt_ms: dict[str, list[float]] = {name: [] for name in VARIANTS}
    env = machine()
    with (
        workdir("bench-pool-handoff-") as tmp,
        llama_servers(2, slots=2, ctx=1024, workdir=tmp) as upstreams,
    ):
        logs = [tmp / f"llama-{index}.log" for index in range(len(upstreams))]
        for order in orders(VARIANTS, args.repeats):
            for name in order:
                with VARIANTS[name](upstreams, tmp) as url:
                    starts = [log.stat().st_size for log in logs]
                    _, wall = asyncio.run(closed_loop(url, loads))
                for log, start in zip(logs, starts, strict=True):
                    found_gaps, found_prompt = slot_gaps(log.read_bytes()[start:])
                    gaps[name] += found_gaps
                    prompt_ms[name] += found_prompt
                print(f"{name}: {wall:.1f} s", flush=True)
    result: dict[str, Any] = {"benchmark": "pool-handoff", "machine": env, "variants": {}}
    for name in VARIANTS:
        result["variants"][name] = {
            "gaps": len(gaps[name]),
            "gap_ms_p50": percentile(gaps[name], 50),
            "gap_ms_p90": percentile(gaps[name], 90),
            "prompt_eval_ms_mean": statistics.fmean(prompt_ms[name]) if prompt_ms[name] else 0.0,
        }
    base = result["variants"][BASELINE]["gap_ms_p50"]
    rows, ratios = [], {}
    for name, v in result["variants"].items():
        v["gap_p50_ratio_to_nginx"] = ratio = v["gap_ms_p50"] / base
        ratios[name] = ratio
        rows.append(
            f"| {name} | {v['gaps']} | {v['gap_ms_p50']:.2f} | {ratio:.2f} | "
            f"{v['gap_ms_p90']:.2f} | {v['prompt_eval_ms_mean']:.0f} |"
        )
    command = ".venv/bin/python -m bench.pool.handoff"
    if args.repeats != 2:
        command += f" --repeats {args.repeats}"
    lines = [
        "# Pool benchmark: idle time of a freed slot (early handoff)",
        "",
        f"Command: `{command}`",
        "",
        "The closed-loop load of `bench.pool.policies` (6 clients x 8 streamed /completion "
        f"requests, two llama-servers with 2 slots each), {args.repeats} alternating rounds per "
        "variant. Gap = llama-server's log time from a slot release to the next slot launch on "
        "the same server, in ms; ratio against nginx least_conn from the same run.",
        "",
        "| variant | gaps | p50 gap | ratio | p90 gap | mean prompt eval |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    publish("pool-handoff", result, lines, env=env, title="Freed slot idle time / nginx",
            groups={"p50 gap": ratios}, ylabel="ratio to least_conn")  # fmt: skip


if __name__ == "__main__":
    main()
