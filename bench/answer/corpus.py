"""The benchmark's collection: a few real factual documents that the questions are about, and
thousands of synthetic chunks around them, embedded by the real embedding server."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from rag.core.vectorstore import ChunkPoint
from rag.service.components import Components

FACTS = {
    "lighthouse.txt": "The Brightwater lighthouse was built in 1871 on Gull Rock. Its lamp is "
    "visible for 22 nautical miles. The last keeper, Agnes Morrow, left in 1964.",
    "otters.txt": "Sea otters hold hands while they sleep so that they do not drift apart. A "
    "group of resting sea otters is called a raft.",
    "slots.md": "llama-server splits its context evenly between its slots: -c 4096 with -np 2 "
    "gives every slot 2048 tokens. The /slots endpoint lists the slots.",
    "uploads.txt": "Uploads larger than 50 MB are refused with status 413. A document uploaded "
    "twice with identical bytes is stored once.",
    "glacier.txt": "The Varn glacier retreated 1.2 kilometres between 1990 and 2020. Its meltwater "
    "feeds Lake Orrin, which freezes every December.",
    "bakery.txt": "The Mill Lane bakery opens at six in the morning and bakes rye bread on "
    "Tuesdays. Its sourdough starter is forty years old.",
    "comet.txt": "Comet Halvorsen returns every 76 years. It was last seen from Earth in 1986 and "
    "its tail was measured at 8 million kilometres.",
    "railway.txt": "The Northern Coast railway has 14 stations. Its night train leaves Port Ellis "
    "at 22:40 and arrives in Carrow at 06:15.",
}
QUESTIONS = [
    "How far is the lamp of the Brightwater lighthouse visible?",
    "When did the last keeper leave the Brightwater lighthouse?",
    "Why do sea otters hold hands while sleeping?",
    "What is a group of resting sea otters called?",
    "How many tokens does each slot get with -c 4096 and -np 2?",
    "What status code do uploads larger than 50 MB get?",
    "How far did the Varn glacier retreat?",
    "When does Lake Orrin freeze?",
    "What time does the Mill Lane bakery open?",
    "How old is the bakery's sourdough starter?",
    "How often does Comet Halvorsen return?",
    "When was Comet Halvorsen last seen?",
    "How many stations does the Northern Coast railway have?",
    "When does the night train leave Port Ellis?",
]

_SUBJECTS = [
    "The committee",
    "The survey team",
    "A local farmer",
    "The harbour master",
    "The museum",
    "The council",
    "A research group",
    "The ferry company",
    "The orchestra",
    "The weather station",
    "The library",
]
_VERBS = [
    "recorded",
    "announced",
    "measured",
    "repaired",
    "painted",
    "catalogued",
    "inspected",
    "rebuilt",
    "moved",
]
_OBJECTS = [
    "the north wall",
    "a set of old maps",
    "the rainfall",
    "three wooden boats",
    "the east tower",
    "a collection of coins",
    "the winter schedule",
    "the garden paths",
    "forty new benches",
    "the river levels",
    "the ticket prices",
    "a row of oak trees",
]
_PLACES = [
    "Ashford",
    "Bramley",
    "Calder",
    "Dunmore",
    "Elmstead",
    "Fairhaven",
    "Glenrock",
    "Hollins",
    "Kelso",
]


def synthetic_texts(count: int, *, seed: int = 7) -> list[str]:
    """``count`` distinct short chunk texts (two or three sentences each)."""
    rng = random.Random(seed)
    texts = []
    for index in range(count):
        sentences = [
            f"{rng.choice(_SUBJECTS)} of {rng.choice(_PLACES)} {rng.choice(_VERBS)} "
            f"{rng.choice(_OBJECTS)} in {1900 + rng.randrange(124)}."
            for _ in range(rng.choice((2, 3)))
        ]
        texts.append(f"Record {index}. " + " ".join(sentences))
    return texts


async def build_collection(
    services: Components,
    collection: str,
    *,
    chunks: int,
    unique: int,
    log: Callable[[str], None],
) -> dict[str, float]:
    """Embed ``unique`` synthetic texts (plus ``FACTS``) and upsert ``chunks`` points, reusing
    the embedded texts' vectors with new ids when ``unique < chunks``."""
    store, embedder = services.store, services.embedder
    await store.ensure_collection(collection)
    started = time.perf_counter()
    texts = synthetic_texts(unique)
    vectors: list[list[float]] = []
    step = embedder.batch_size * 2  # two requests in flight: one per slot, none left waiting
    for start in range(0, len(texts), step):
        vectors.extend(await embedder.embed(texts[start : start + step]))
        if len(vectors) % (step * 8) == 0 or len(vectors) == len(texts):
            log(f"embedded {len(vectors)}/{len(texts)} synthetic chunks")
    embed_seconds = time.perf_counter() - started
    points = [
        ChunkPoint(
            f"synthetic-{i // 10}",
            i % 10,
            vectors[i % unique],
            texts[i % unique],
            {"filename": f"synthetic-{i // 10}.txt", "page": None, "metadata": {}},
        )
        for i in range(chunks)
    ]
    fact_vectors = await embedder.embed(list(FACTS.values()))
    for index, ((name, text), vector) in enumerate(zip(FACTS.items(), fact_vectors, strict=True)):
        points.append(
            ChunkPoint(f"fact-{index}", 0, vector, text, {"filename": name, "metadata": {}})
        )
    started_upsert = time.perf_counter()
    for start in range(0, len(points), 1024):
        await store.upsert(collection, points[start : start + 1024])
    log(f"upserted {len(points)} points")
    return {
        "embed_seconds": round(embed_seconds, 1),
        "upsert_seconds": round(time.perf_counter() - started_upsert, 1),
        "points": len(points),
        "unique_embedded_texts": unique + len(FACTS),
    }
