"""Embeddings through ``rag balancer`` against the same llama-server directly: chunks per second.

    python -m bench.pool.embeddings [--batches 20] [--batch 32] [--concurrency 4] [--rounds 3]
        [--llama-server PATH --embedding-model GGUF --ngl 99 --machine NAME]

One embedding server (all-MiniLM-L6-v2, the service's embedding arguments: ``--embeddings
--pooling mean -c 1024 -np 2 -b 512 -ub 512``, plus the given flags); ``--concurrency`` clients
each post ``--batches`` ``/v1/embeddings`` requests of ``--batch`` texts of about 190 model
tokens, directly and through the balancer, alternating per round. chunks/s = texts embedded /
wall time. Goal (issue 13): through the pool >= 0.95 of direct. Results:
docs/benchmarks/pool-embeddings[-MACHINE].{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import httpx

from bench.pool.common import (
    add_server_options,
    balancer,
    command_line,
    llama_servers,
    machine,
    orders,
    publish,
    server_options,
    stop_on_sigterm,
    workdir,
)

_VOCABULARY = (
    "retrieval augmented generation splits documents into chunks embeds each chunk with a "
    "sentence encoder stores the vectors in an index and answers a question from the nearest "
    "chunks the model cites its sources by number clinical guidelines describe dosing "
    "contraindications monitoring and follow up for patients with chronic disease"
)
WORDS = _VOCABULARY.split()
EMBEDDING_ARGS = ("--embeddings", "--pooling", "mean", "-b", "512", "-ub", "512")


def texts(count: int, seed: int) -> list[str]:
    """``count`` texts of 150 words (about 190 WordPiece tokens each)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(150)) for _ in range(count)]


async def run_load(url: str, batches: int, batch: int, concurrency: int, seed: int) -> float:
    """chunks per second over the whole load."""
    timeout = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=120.0)
    async with httpx.AsyncClient(timeout=timeout) as http:

        async def client(i: int) -> int:
            done = 0
            for b in range(batches):
                inputs = texts(batch, seed * 100_000 + i * 1000 + b)
                response = await http.post(f"{url}/v1/embeddings", json={"input": inputs})
                response.raise_for_status()
                done += len(response.json()["data"])
            return done

        started = time.perf_counter()
        done = sum(await asyncio.gather(*(client(i) for i in range(concurrency))))
        return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=5, help="per client")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    add_server_options(parser)
    args = parser.parse_args()
    options = server_options(args)
    stop_on_sigterm()
    env = machine(args.machine)
    slots, ctx = options.slots or 2, options.ctx or 1024
    rates: dict[str, list[float]] = {"direct": [], "balancer": []}
    with (
        workdir("bench-pool-embeddings-") as tmp,
        llama_servers(
            1,
            slots=slots,
            ctx=ctx,
            workdir=tmp,
            options=options,
            embedding=True,
            args=EMBEDDING_ARGS,
        ) as (upstream,),  # fmt: skip
        balancer([upstream], workdir=tmp) as via,
    ):
        targets = {"direct": upstream, "balancer": via}
        for name in targets:  # warm-up
            asyncio.run(run_load(targets[name], 1, args.batch, args.concurrency, 0))
        for round_, names in enumerate(orders(targets, args.rounds)):
            for name in names:
                rate = asyncio.run(
                    run_load(targets[name], args.batches, args.batch, args.concurrency, round_ + 1)
                )
                rates[name].append(rate)
                print(f"{name}: {rate:.1f} chunks/s", flush=True)
    direct, via_rate = sum(rates["direct"]), sum(rates["balancer"])
    ratio = via_rate / direct
    result: dict[str, Any] = {
        "benchmark": "pool-embeddings", "machine": env,
        "command": command_line("bench.pool.embeddings"), "slots": slots, "ctx": ctx,
        "flags": options.describe(), "batch": args.batch, "batches_per_client": args.batches,
        "concurrency": args.concurrency, "chunks_per_s": rates, "ratio": ratio,
        "goal_ratio_ge_0.95": ratio >= 0.95,
    }  # fmt: skip
    lines = [
        "# Pool benchmark: embeddings through the balancer",
        "",
        f"Command: `{result['command']}`",
        "",
        f"One embedding server (all-MiniLM-L6-v2, `-np {slots} -c {ctx} "
        f"{' '.join(EMBEDDING_ARGS)} {options.describe()}`); {args.concurrency} clients, each "
        f"{args.batches} `/v1/embeddings` requests of {args.batch} texts of ~190 tokens; "
        f"{args.rounds} alternating rounds.",
        "",
        "| via | chunks/s per round | mean |",
        "| --- | --- | ---: |",
        *(
            f"| {name} | {', '.join(f'{r:.1f}' for r in got)} | {sum(got) / len(got):.1f} |"
            for name, got in rates.items()
        ),
        "",
        f"Ratio balancer / direct: **{ratio:.3f}** (goal >= 0.95: "
        f"**{'met' if ratio >= 0.95 else 'missed'}**).",
    ]
    publish("pool-embeddings", result, lines, env=env, title="Embeddings: balancer / direct",
            groups={"chunks/s": {"balancer/direct": ratio}}, ylabel="ratio")  # fmt: skip


if __name__ == "__main__":
    main()
