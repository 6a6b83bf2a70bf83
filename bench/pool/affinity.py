"""Prefix affinity on a RAG-like load: many questions over a few shared sets of sources.

    .venv/bin/python -m bench.pool.affinity [--sets 16] [--questions 3] [--clients 3]
        [--repeats 4] [--cache-ram MIB]

Two llama-servers (SmolLM2-135M, ``-np 2 -c 4096``). Each prompt is a system prompt, one of
``--sets`` source sets (SciFact abstracts from ../shared/data, about 400 tokens) and one of
``--questions`` questions; ``--clients`` closed-loop clients send them streamed, in one seeded
order. ``rag balancer`` (slots policy) runs with affinity and without
(``RAG_BALANCER_AFFINITY=false``), in alternating rounds; every round salts the system prompt so
that no round re-uses another's cache. Figures: time to first token and the share of prompt
tokens llama.cpp re-used from its cache (``timings.cache_n``), as ratios with / without.

llama-server also keeps processed prompts in a host-RAM cache shared by its slots (``--cache-ram``,
8 GiB by default) and restores the longest match into any slot. SmolLM2-135M needs about 23 KB of
KV cache per token, so 8 GiB holds every source set here and affinity has little to add; a
production model needs far more per token (an 8B model with grouped-query attention about
128 KB), so its 8 GiB holds a few dozen prompts. ``--cache-ram 0`` measures servers whose host
cache cannot hold the working set, where only the slots' own KV cache can be re-used.
The default load (16 sets, 3 questions each) has more source sets than the servers' slots and
more than one server keeps hot, as a shared RAG service sees; with ``--sets 4`` every server soon
holds every set in its host cache and affinity is neutral (docs/benchmarks/README.md).
Results: docs/benchmarks/pool-affinity.{json,md,png}; other loads add ``-sets-N`` and
``-cache-ram-N`` to the name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from pathlib import Path
from typing import Any

from bench.pool.common import (
    Sample,
    add_server_options,
    balancer,
    closed_loop,
    command_line,
    llama_servers,
    machine,
    mean,
    orders,
    p50,
    paired_ratio_interval,
    publish,
    server_options,
    stop_on_sigterm,
    summary,
    workdir,
)

SCIFACT = Path(__file__).resolve().parents[3] / "shared" / "data" / "scifact" / "corpus.jsonl"
SOURCE_CHARS = 1700
DEFAULT_LOAD = (16, 3, 3, 4)  # source sets, questions per set, clients, rounds per variant
SYSTEM = (
    "You are a careful assistant. Answer the question using only the numbered sources below. "
    "Cite the sources you use by number. If the sources do not answer it, say you do not know."
)


def source_sets(count: int, seed: int = 11, corpus_path: Path = SCIFACT) -> list[str]:
    """``count`` blocks of numbered sources, about SOURCE_CHARS characters each."""
    abstracts: list[str] = []
    with corpus_path.open() as corpus:
        for line in corpus:
            text = json.loads(line)["text"]
            if 300 < len(text) < 900:
                abstracts.append(text)
            if len(abstracts) >= count * 8:
                break
    rng = random.Random(seed)
    rng.shuffle(abstracts)
    sets = []
    for index in range(count):
        parts, size, n = [], 0, 1
        for text in abstracts[index * 8 : (index + 1) * 8]:
            if size > SOURCE_CHARS:
                break
            parts.append(f"[{n}] {text}")
            size += len(text)
            n += 1
        sets.append("\n".join(parts))
    return sets


def workloads(
    sets: list[str], questions: int, clients: int, salt: str, seed: int = 5
) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    prompts = [
        f"Session {salt}. {SYSTEM}\n\nSources:\n{sources}\n\nQuestion {q + 1}: what does source "
        f"{q % 3 + 1} find, in one sentence?\nAnswer:"
        for sources in sets
        for q in range(questions)
    ]
    rng.shuffle(prompts)
    bodies = [{"prompt": p, "n_predict": 4, "temperature": 0.0} for p in prompts]
    return [bodies[i::clients] for i in range(clients)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=DEFAULT_LOAD[0])
    parser.add_argument("--questions", type=int, default=DEFAULT_LOAD[1])
    parser.add_argument("--clients", type=int, default=DEFAULT_LOAD[2])
    parser.add_argument("--repeats", type=int, default=DEFAULT_LOAD[3])
    parser.add_argument(
        "--cache-ram", type=int, default=None, help="llama-server --cache-ram in MiB (0: off)"
    )
    parser.add_argument(
        "--corpus", type=Path, default=SCIFACT, help="SciFact corpus.jsonl (../shared/data)"
    )
    add_server_options(parser)
    args = parser.parse_args()
    options = server_options(args)
    stop_on_sigterm()
    sets = source_sets(args.sets, corpus_path=args.corpus)
    variants = {"with affinity": "true", "without affinity": "false"}
    samples: dict[str, list[Sample]] = {name: [] for name in variants}
    rounds: dict[str, list[list[float]]] = {name: [] for name in variants}  # TTFTs per round
    env = machine(args.machine)
    with (
        workdir("bench-pool-affinity-") as tmp,
        llama_servers(
            2, slots=2, ctx=4096, workdir=tmp, cache_ram_mib=args.cache_ram, options=options
        ) as upstreams,  # fmt: skip
    ):
        for repeat, names in enumerate(orders(variants, args.repeats)):
            for name in names:
                loads = workloads(sets, args.questions, args.clients, salt=f"{repeat}-{name}")
                with balancer(upstreams, workdir=tmp, affinity=variants[name]) as url:
                    got, wall = asyncio.run(closed_loop(url, loads))
                samples[name].extend(got)
                rounds[name].append([s.ttft for s in got if s.ok])
                print(f"{name}: {wall:.1f} s, {sum(not s.ok for s in got)} errors", flush=True)
    result: dict[str, Any] = {
        "benchmark": "pool-affinity",
        "machine": env,
        "sets": args.sets,
        "questions_per_set": args.questions,
        "clients": args.clients,
        "repeats": args.repeats,
        "cache_ram_mib": args.cache_ram,
        "variants": {},
    }
    for name, got in samples.items():
        ok = [s for s in got if s.ok]
        prompt = sum(s.prompt_tokens for s in ok)
        result["variants"][name] = {
            "ttft_s": summary([s.ttft for s in ok]),
            "prompt_tokens": prompt,
            "cached_tokens": sum(s.cached_tokens for s in ok),
            "cached_share": sum(s.cached_tokens for s in ok) / prompt if prompt else 0.0,
            "errors": len(got) - len(ok),
        }
    with_, without = result["variants"]["with affinity"], result["variants"]["without affinity"]
    ratios = {
        "ttft_mean": with_["ttft_s"]["mean"] / without["ttft_s"]["mean"],
        "ttft_p50": with_["ttft_s"]["p50"] / without["ttft_s"]["p50"],
        "ttft_p99": with_["ttft_s"]["p99"] / without["ttft_s"]["p99"],
        "cached_tokens": with_["cached_tokens"] / max(1, without["cached_tokens"]),
    }
    result["ratio_with_to_without"] = ratios
    intervals = {
        "ttft_mean": paired_ratio_interval(
            rounds["with affinity"], rounds["without affinity"], mean
        ),
        "ttft_p50": paired_ratio_interval(rounds["with affinity"], rounds["without affinity"], p50),
    }
    result["ratio_with_to_without_95ci"] = intervals
    result["goal_affinity_improves_ttft"] = ratios["ttft_mean"] < 1.0
    rows = [
        f"| {name} | {v['ttft_s']['mean']:.2f} | {v['ttft_s']['p50']:.2f} | "
        f"{v['ttft_s']['p99']:.2f} | {v['cached_tokens']} / {v['prompt_tokens']} "
        f"({v['cached_share']:.0%}) | {v['errors']} |"
        for name, v in result["variants"].items()
    ]
    command = command_line("bench.pool.affinity")
    result["command"] = command
    result["flags"] = options.describe()
    cache = "default --cache-ram" if args.cache_ram is None else f"--cache-ram {args.cache_ram}"
    lines = [
        "# Pool benchmark: prefix affinity on a RAG-like load",
        "",
        f"Command: `{command}`",
        "",
        f"Two llama-servers (SmolLM2-135M, -np {options.slots or 2} -c {options.ctx or 4096}, "
        f"{options.describe()}, {cache}) behind `rag balancer` "
        f"(slots policy). {args.sets} source sets x {args.questions} questions, "
        f"{args.clients} closed-loop clients, streamed /completion, 4 tokens each; "
        f"{args.repeats} alternating rounds per variant, each with its own salt. TTFT in "
        "seconds; cached = prompt tokens llama.cpp re-used (`timings.cache_n`).",
        "",
        "| variant | mean TTFT | p50 TTFT | p99 TTFT | cached / prompt tokens | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Ratios with / without affinity: mean TTFT {ratios['ttft_mean']:.2f} "
        f"(95% bootstrap interval over rounds {intervals['ttft_mean'][0]:.2f}-"
        f"{intervals['ttft_mean'][1]:.2f}), p50 {ratios['ttft_p50']:.2f} "
        f"({intervals['ttft_p50'][0]:.2f}-{intervals['ttft_p50'][1]:.2f}), p99 "
        f"{ratios['ttft_p99']:.2f}; cached prompt tokens {ratios['cached_tokens']:.2f}x.",
        "",
        "Goal: affinity improves time to first token: "
        f"**{'met' if result['goal_affinity_improves_ttft'] else 'missed'}**.",
    ]
    groups = {
        "mean TTFT": {"with/without": ratios["ttft_mean"]},
        "p99 TTFT": {"with/without": ratios["ttft_p99"]},
        "cached tokens": {"with/without": ratios["cached_tokens"]},
    }
    name = "pool-affinity"
    if args.sets != DEFAULT_LOAD[0]:
        name += f"-sets-{args.sets}"
    if args.cache_ram is not None:
        name += f"-cache-ram-{args.cache_ram}"
    publish(name, result, lines, env=env, title="Prefix affinity: with / without",
            groups=groups, ylabel="ratio with / without")  # fmt: skip


if __name__ == "__main__":
    main()
