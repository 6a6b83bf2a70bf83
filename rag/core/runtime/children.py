"""Which ``llama-server`` children the embedded runtime starts, and with which flags.

On a CUDA build every child offloads all its layers (``-ngl``, ``llama_gpu_layers``); slots and
context per child are settings (docs/operations.md has the GPU guidance measured on an H200).
"""

from __future__ import annotations

from pathlib import Path

from rag.core.runtime.gpu import resolve
from rag.core.runtime.supervisor import ChildSpec, free_port
from rag.core.settings import Settings

ALL_LAYERS = 999
"""``-ngl`` that offloads every layer of any model (llama.cpp caps it at the model's count)."""


def gpu_layers(settings: Settings) -> int | None:
    """The ``-ngl`` of the children: the setting when given, else all layers on a CUDA build and
    none (the flag left out) on a CPU one."""
    if settings.llama_gpu_layers is not None:
        return settings.llama_gpu_layers
    cuda = resolve(settings.llama_backend, settings.llama_cuda_arch).kind == "cuda"
    return ALL_LAYERS if cuda else None


def offload_args(settings: Settings) -> tuple[str, ...]:
    layers = gpu_layers(settings)
    return () if layers is None else ("-ngl", str(layers))


def embedding_args(settings: Settings, model: Path, slots: int | None = None) -> tuple[str, ...]:
    ubatch, slots = settings.embedding_ubatch, slots or settings.embedding_slots
    return (
        "-m", str(model), "--embeddings", "--pooling", "mean",
        "-c", str(ubatch * slots), "-np", str(slots), "-b", str(ubatch), "-ub", str(ubatch),
        "-t", str(settings.llama_threads), "--metrics", "--no-webui", *offload_args(settings),
    )  # fmt: skip


def generation_args(settings: Settings, model: Path) -> tuple[str, ...]:
    return (
        "-m", str(model), "-c", str(settings.generation_ctx), "-np", str(settings.generation_slots),
        "-t", str(settings.llama_threads), "--metrics", "--no-webui", *offload_args(settings),
    )  # fmt: skip


QUERY_EMBEDDING_ROLE = "embedding-query"
"""Role of the embedding children reserved for queries (the query lane, rag/core/embeddings.py)."""


def child_specs(
    settings: Settings, embedding_model: Path, generation_model: Path
) -> list[ChildSpec]:
    """The children to start: an embedding server unless external ones are configured (with
    ``embedding_query_servers`` more for the query lane unless it has external ones), and
    ``generation_servers`` generation servers unless external ones are configured."""
    specs = []
    if not settings.embedding_urls:
        specs.append(
            ChildSpec(
                "embedding", "embedding", embedding_args(settings, embedding_model), free_port()
            )
        )
        if settings.embedding_query_lane and not settings.embedding_query_urls:
            args = embedding_args(settings, embedding_model, settings.embedding_query_slots)
            for index in range(settings.embedding_query_servers):
                name = f"embedding-query-{index}"
                specs.append(ChildSpec(name, QUERY_EMBEDDING_ROLE, args, free_port()))
    if not settings.generation_urls:
        for index in range(settings.generation_servers):
            specs.append(
                ChildSpec(
                    f"generation-{index}",
                    "generation",
                    generation_args(settings, generation_model),
                    free_port(),
                )
            )
    return specs
