"""The cmake flags of a ``llama-server`` build: the base flags and this CPU's instruction sets.

The build (``build.py``) passes them to cmake and the cache (``paths.py``) is keyed by them, so a
change of either rebuilds.
"""

from __future__ import annotations

from pathlib import Path

from rag.core.runtime.gpu import CPU, Backend

BASE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    # Not GGML_NATIVE: on CPUs that report AMX it enables the AMX kernels, which crash (SIGSEGV
    # in ggml_backend_amx_mul_mat) loading the Q4_1 SmolLM2 model on the reference machine.
    # The instruction sets are named instead, from what this CPU reports (the cache is local
    # and keyed by these flags, so another CPU gets its own build).
    "-DGGML_NATIVE=OFF",
]
# cmake option -> /proc/cpuinfo flag it needs
_ISA = {
    "GGML_SSE42": "sse4_2",
    "GGML_AVX": "avx",
    "GGML_AVX2": "avx2",
    "GGML_BMI2": "bmi2",
    "GGML_FMA": "fma",
    "GGML_F16C": "f16c",
    "GGML_AVX512": "avx512f",
    "GGML_AVX512_VBMI": "avx512vbmi",
    "GGML_AVX512_VNNI": "avx512_vnni",
    "GGML_AVX512_BF16": "avx512_bf16",
}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_flags(backend: Backend = CPU) -> list[str]:
    """Every instruction-set option set explicitly ON or OFF (a cached OFF never lingers), and
    for a CUDA build the CUDA backend for the chosen architectures (the CPU flags still apply:
    whatever is not offloaded runs on the CPU)."""
    present = cpu_flags()
    isa = [f"-D{option}={'ON' if flag in present else 'OFF'}" for option, flag in _ISA.items()]
    if backend.kind == "cuda":
        cuda = ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={backend.cuda_arch}"]
        if backend.nvcc is not None:
            cuda.append(f"-DCMAKE_CUDA_COMPILER={backend.nvcc}")
        return [*BASE_FLAGS, *isa, *cuda]
    return [*BASE_FLAGS, *isa]
