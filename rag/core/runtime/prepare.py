"""Everything ``rag run`` needs before it can start children: a binary and two checked models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rag.core.runtime.build import Progress, ensure_llama_server
from rag.core.runtime.models import ensure_embedding_model, ensure_generation_model
from rag.core.settings import Settings


@dataclass(frozen=True)
class PreparedRuntime:
    llama_server: Path
    generation_model: Path
    embedding_model: Path


def _quiet(stage: str, fraction: float | None) -> None:
    return None


def prepare_runtime(settings: Settings, progress: Progress = _quiet) -> PreparedRuntime:
    """Build or find llama-server and prepare both models; raises RuntimeSetupError."""
    binary = ensure_llama_server(settings, progress)
    generation = ensure_generation_model(settings, progress)
    embedding = ensure_embedding_model(settings, progress)
    return PreparedRuntime(binary, generation, embedding)
