"""``rag runtime status``: what is built and prepared, without building or preparing anything."""

from __future__ import annotations

from typing import Any

from rag.core.errors import RuntimeSetupError
from rag.core.runtime.build import binary_works
from rag.core.runtime.children import gpu_layers
from rag.core.runtime.gpu import CPU
from rag.core.runtime.paths import RuntimePaths, embedding_model_path, generation_model_path
from rag.core.settings import Settings


def runtime_status(settings: Settings) -> dict[str, Any]:
    """The runtime's state; ``backend_error`` says why the asked-for backend cannot be built."""
    try:
        paths = RuntimePaths.from_settings(settings)
        problem = None
    except RuntimeSetupError as exc:
        paths = RuntimePaths(settings.cache_dir.expanduser(), settings.llama_cpp_version, CPU)
        problem = str(exc)
    binary = (
        settings.llama_server_bin.expanduser() if settings.llama_server_bin else paths.llama_server
    )
    generation = generation_model_path(settings)
    embedding = embedding_model_path(settings)
    backend = paths.backend.describe()
    status: dict[str, Any] = {
        "llama_server": str(binary),
        "llama_server_ready": problem is None and binary_works(binary),
        "llama_cpp_version": settings.llama_cpp_version,
        "build_log": str(paths.build_log),
        "models": {"generation": str(generation), "embedding": str(embedding)},
        "models_ready": {"generation": generation.is_file(), "embedding": embedding.is_file()},
        "cache_dir": str(paths.cache_dir),
        "backend": backend["kind"],
        "cuda_arch": backend["cuda_arch"],
        "gpus": backend["gpus"],
        "gpu_layers": gpu_layers(settings) if problem is None else None,
    }
    if problem is not None:
        status["backend_error"] = problem
    return status
