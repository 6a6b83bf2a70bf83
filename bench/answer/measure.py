"""The measurements: time to the first answer character through ``POST /v1/answer`` and straight
from the generation llama-server with the same final prompt, and search latency."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import httpx

from rag.answer import AnswerService, Question
from rag.answer.extract import FieldExtractor
from rag.core.vectorstore import VectorStore


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.5) * 1000, 2),
        "p90_ms": round(percentile(values, 0.9) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2) if values else float("nan"),
    }


async def erase_slots(http: httpx.AsyncClient, generation_url: str, slots: int) -> None:
    """Empty every slot's prompt cache, so that both arms process the whole prompt."""
    for slot in range(slots):
        response = await http.post(f"{generation_url}/slots/{slot}?action=erase")
        response.raise_for_status()


async def prime(http: httpx.AsyncClient, generation_url: str, completion: dict[str, Any]) -> None:
    """Process the prompt once (one token generated), so that the slot holds it in its cache."""
    body = {**completion, "stream": False, "n_predict": 1}
    (await http.post(f"{generation_url}/completion", json=body)).raise_for_status()


async def wait_idle(http: httpx.AsyncClient, generation_url: str) -> None:
    for _ in range(300):
        slots = (await http.get(f"{generation_url}/slots")).json()
        if not any(slot.get("is_processing") for slot in slots):
            return
        await asyncio.sleep(0.02)


async def service_ttft(
    http: httpx.AsyncClient, service_url: str, body: dict[str, Any]
) -> tuple[float, float]:
    """Seconds to the ``sources`` event and to the first ``delta`` event; then disconnects."""
    started = time.perf_counter()
    sources_at = float("nan")
    async with http.stream("POST", f"{service_url}/v1/answer", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line == "event: sources":
                sources_at = time.perf_counter() - started
            elif line == "event: delta":
                return sources_at, time.perf_counter() - started
            elif line == "event: error":
                raise RuntimeError("the service answered with an error event")
    raise RuntimeError("no delta event")


async def direct_ttft(
    http: httpx.AsyncClient, generation_url: str, completion: dict[str, Any]
) -> float:
    """Seconds to the first answer character straight from llama-server (same body)."""
    extractor = FieldExtractor("answer")
    started = time.perf_counter()
    body = {**completion, "stream": True}
    async with http.stream("POST", f"{generation_url}/completion", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            content = json.loads(line[5:]).get("content", "")
            if extractor.feed(content):
                return time.perf_counter() - started
    raise RuntimeError("no answer text from llama-server")


async def ttft_pairs(
    *,
    http: httpx.AsyncClient,
    service: AnswerService,
    service_url: str,
    generation_url: str,
    slots: int,
    collection: str,
    questions: list[str],
    rounds: int,
    warm: bool,
) -> dict[str, Any]:
    """Alternate the two arms question by question. ``warm``: the slots' caches are emptied and
    the exact prompt processed once per question, so both arms find it cached (the difference is
    then the service's own time, not prompt processing); otherwise every call starts cold."""
    through, direct, sources, prepare = [], [], [], []
    skipped: list[str] = []
    for round_ in range(rounds):
        for index, question in enumerate(questions):
            started = time.perf_counter()
            prepared = await service.prepare(Question(question, collection))
            prepare.append(time.perf_counter() - started)
            if prepared.body is None:  # "I don't know": the model is not called, no TTFT
                skipped.append(question)
                continue
            body = {"question": question, "collection": collection, "stream": True}
            arms = ["service", "direct"] if (index + round_) % 2 == 0 else ["direct", "service"]
            if warm:
                await wait_idle(http, generation_url)
                await erase_slots(http, generation_url, slots)
                await prime(http, generation_url, prepared.body)
            for arm in arms:
                await wait_idle(http, generation_url)
                if not warm:
                    await erase_slots(http, generation_url, slots)
                if arm == "service":
                    at_sources, at_delta = await service_ttft(http, service_url, body)
                    sources.append(at_sources)
                    through.append(at_delta)
                else:
                    direct.append(await direct_ttft(http, generation_url, prepared.body))
    added = [a - b for a, b in zip(through, direct, strict=True)]
    return {
        "service_ttft": summary(through),
        "direct_ttft": summary(direct),
        "added_ttft_paired": summary(added),
        "service_time_to_sources_event": summary(sources),
        "prepare_in_process": summary(prepare),
        "ratio_p50": round(percentile(through, 0.5) / percentile(direct, 0.5), 4),
        "questions_without_sources": skipped,
    }


async def search_latency(
    *,
    http: httpx.AsyncClient,
    service_url: str,
    embedding_url: str,
    collection: str,
    store: VectorStore,
    queries: list[str],
    top_k: int,
) -> dict[str, Any]:
    """``POST /v1/search`` against the baseline of one query embedding straight from the server;
    and the vector store's own part (the query vector given), in process."""
    searched, embedded, stored = [], [], []
    for query in queries:
        started = time.perf_counter()
        response = await http.post(
            f"{service_url}/v1/search",
            json={"query": query, "collection": collection, "top_k": top_k},
        )
        response.raise_for_status()
        searched.append(time.perf_counter() - started)
        started = time.perf_counter()
        response = await http.post(f"{embedding_url}/v1/embeddings", json={"input": [query]})
        response.raise_for_status()
        embedded.append(time.perf_counter() - started)
        vector = response.json()["data"][0]["embedding"]
        started = time.perf_counter()
        await store.search(collection, vector=vector, text=query, top_k=top_k)
        stored.append(time.perf_counter() - started)
    return {
        "search": summary(searched),
        "embedding_only_baseline": summary(embedded),
        "vector_store_only": summary(stored),
        "ratio_p50": round(percentile(searched, 0.5) / percentile(embedded, 0.5), 3),
    }
