"""Check a prepared embedding model by serving it and comparing with reference embeddings.

``minilm_reference.json`` holds all-MiniLM-L6-v2 embeddings computed with the reference recipe
(sentence-transformers: mean pooling, L2 normalisation, 256-token limit).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import httpx
import numpy as np

from rag.core.errors import RuntimeSetupError
from rag.core.runtime.children import embedding_args
from rag.core.runtime.supervisor import ChildSpec, Supervisor, free_port
from rag.core.settings import Settings

MIN_COSINE = 0.9999


def reference() -> tuple[list[str], np.ndarray]:
    data = json.loads(
        resources.files("rag.core.runtime").joinpath("minilm_reference.json").read_text()
    )
    return list(data["texts"]), np.asarray(data["embeddings"], dtype=np.float64)


async def verify_embedding_model(settings: Settings, binary: Path, model: Path) -> float:
    """Serve ``model`` with ``binary``, embed the reference texts, return the worst cosine."""
    texts, expected = reference()
    spec = ChildSpec("verify-embedding", "embedding", embedding_args(settings, model), free_port())
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
        supervisor = Supervisor(
            binary, [spec], logs_dir=settings.logs_dir, http=http, start_timeout=60.0
        )
        await supervisor.start()
        try:
            if not await supervisor.wait_healthy(90.0):
                raise RuntimeSetupError(
                    f"llama-server did not load {model}; see {settings.logs_dir}/{spec.name}.log"
                )
            response = await http.post(f"{spec.url}/v1/embeddings", json={"input": texts})
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise RuntimeSetupError(f"embedding check against {model} failed: {exc}") from exc
        finally:
            await supervisor.stop()
    rows = sorted(response.json()["data"], key=lambda item: item["index"])
    got = np.asarray([row["embedding"] for row in rows], dtype=np.float64)
    if got.shape != expected.shape:
        raise RuntimeSetupError(
            f"{model} gives embeddings of shape {got.shape}, expected {expected.shape}"
        )
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    want = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    worst = float(np.min(np.sum(got * want, axis=1)))
    if worst < MIN_COSINE:
        raise RuntimeSetupError(
            f"{model} does not reproduce the reference embeddings (worst cosine {worst:.6f} < "
            f"{MIN_COSINE}); delete it and run `rag runtime prepare` again"
        )
    return worst
