"""Which backend ``llama-server`` is built for: CUDA when a toolkit and an NVIDIA GPU are here.

``detect()`` looks for ``nvcc`` (``PATH``, ``$CUDA_HOME/bin``, ``/usr/local/cuda/bin``) and asks
``nvidia-smi`` for the GPUs and their compute capability; ``choose_backend`` is the pure decision
from the ``llama_backend`` setting (``auto``, ``cuda`` or ``cpu``) and what was found, tested with
plain values. The CUDA architecture comes from the detected GPUs (compute capability 9.0 gives
``90``) unless ``llama_cuda_arch`` names one.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rag.core.errors import RuntimeSetupError

BackendSetting = Literal["auto", "cuda", "cpu"]
_PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "9.0"
    memory_mib: int | None = None

    @property
    def arch(self) -> str:
        """The CMake CUDA architecture of this GPU: ``9.0`` -> ``90``."""
        return self.compute_capability.replace(".", "")


@dataclass(frozen=True)
class Toolchain:
    """What was found on this machine."""

    nvcc: Path | None
    gpus: tuple[Gpu, ...] = ()


@dataclass(frozen=True)
class Backend:
    kind: Literal["cpu", "cuda"]
    cuda_arch: str | None = None  # "90", or "80;90" for several
    nvcc: Path | None = None
    gpus: tuple[Gpu, ...] = field(default=())

    @property
    def key(self) -> str:
        """Part of the build cache's folder name: the CPU build keeps the plain name."""
        return "" if self.kind == "cpu" else f"cuda{self.cuda_arch.replace(';', '-')}-"  # type: ignore[union-attr]

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "cuda_arch": self.cuda_arch,
            "nvcc": str(self.nvcc) if self.nvcc else None,
            "gpus": [
                {
                    "name": g.name,
                    "compute_capability": g.compute_capability,
                    "memory_mib": g.memory_mib,
                }
                for g in self.gpus
            ],
        }


CPU = Backend("cpu")


def choose_backend(
    setting: BackendSetting, found: Toolchain, cuda_arch: str | None = None
) -> Backend:
    """The backend to build: CUDA when asked, or on ``auto`` when ``nvcc`` and a GPU are here."""
    if setting == "cpu":
        return CPU
    usable = found.nvcc is not None and (found.gpus or cuda_arch)
    if not usable:
        if setting == "auto":
            return CPU
        missing = []
        if found.nvcc is None:
            missing.append("nvcc (the CUDA toolkit: set CUDA_HOME or put nvcc on PATH)")
        if not found.gpus and not cuda_arch:
            missing.append("an NVIDIA GPU (nvidia-smi lists none; RAG_LLAMA_CUDA_ARCH=90 "
                           "builds for one anyway)")  # fmt: skip
        raise RuntimeSetupError(
            "RAG_LLAMA_BACKEND=cuda, but this machine lacks " + " and ".join(missing)
        )
    arch = cuda_arch or ";".join(sorted({gpu.arch for gpu in found.gpus}))
    return Backend("cuda", arch, found.nvcc, found.gpus)


def find_nvcc() -> Path | None:
    candidates = [shutil.which("nvcc")]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        candidates.append(str(Path(cuda_home) / "bin" / "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def list_gpus() -> tuple[Gpu, ...]:
    """The NVIDIA GPUs ``nvidia-smi`` reports (none when it is absent or fails)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    query = "--query-gpu=name,compute_cap,memory.total"
    try:
        done = subprocess.run(
            [smi, query, "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=_PROBE_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if done.returncode != 0:
        return ()
    return parse_gpus(done.stdout)


def parse_gpus(text: str) -> tuple[Gpu, ...]:
    """Rows of ``nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader``."""
    gpus = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 2 or not parts[1].replace(".", "").isdigit():
            continue
        memory = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
        gpus.append(Gpu(parts[0], parts[1], memory))
    return tuple(gpus)


@functools.lru_cache(maxsize=1)
def detect() -> Toolchain:
    """What this machine has (probed once per process)."""
    return Toolchain(find_nvcc(), list_gpus())


def resolve(setting: BackendSetting, cuda_arch: str | None = None) -> Backend:
    if setting == "cpu":  # no probe at all
        return CPU
    return choose_backend(setting, detect(), cuda_arch)
