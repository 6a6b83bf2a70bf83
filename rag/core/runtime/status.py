"""``rag runtime status``: what is built and prepared, without building or preparing anything."""

from __future__ import annotations

from typing import Any

from rag.core.runtime.build import binary_works
from rag.core.runtime.paths import (
    RuntimePaths,
    embedding_model_path,
    generation_model_path,
    llama_server_path,
)
from rag.core.settings import Settings


def runtime_status(settings: Settings) -> dict[str, Any]:
    paths = RuntimePaths.from_settings(settings)
    binary = llama_server_path(settings)
    generation = generation_model_path(settings)
    embedding = embedding_model_path(settings)
    return {
        "llama_server": str(binary),
        "llama_server_ready": binary_works(binary),
        "llama_cpp_version": settings.llama_cpp_version,
        "build_log": str(paths.build_log),
        "models": {"generation": str(generation), "embedding": str(embedding)},
        "models_ready": {"generation": generation.is_file(), "embedding": embedding.is_file()},
        "cache_dir": str(paths.cache_dir),
    }
