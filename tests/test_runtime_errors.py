"""Set-up failures name their cause: no compiler, a failed build, a corrupt model file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag.core.errors import RuntimeSetupError
from rag.core.runtime.build import _build, ensure_llama_server
from rag.core.runtime.gpu import CPU
from rag.core.runtime.models import check_gguf, verify_prepared
from rag.core.runtime.paths import RuntimePaths
from rag.core.runtime.prepare import PreparedRuntime
from rag.core.settings import Settings


def test_missing_compiler_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    settings = Settings(cache_dir=tmp_path / "cache")
    with pytest.raises(RuntimeSetupError, match=r"cmake, c\+\+, cc not found.*build-essential"):
        ensure_llama_server(settings)


def test_failed_build_names_the_step_and_keeps_the_log(tmp_path: Path) -> None:
    source = tmp_path / "llama.cpp"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(
        'cmake_minimum_required(VERSION 3.14)\nproject(broken C)\nmessage(FATAL_ERROR "no way")\n'
    )
    log = tmp_path / "build.log"
    with pytest.raises(RuntimeSetupError) as raised:
        _build(source, tmp_path / "build", log, lambda stage, fraction: None, CPU)
    message = str(raised.value)
    assert "configuring llama.cpp failed" in message
    assert "no way" in message
    assert str(log) in message and "no way" in log.read_text()


def test_configured_binary_that_does_not_run(tmp_path: Path) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("not a program")
    with pytest.raises(RuntimeSetupError, match="is not a working llama-server"):
        ensure_llama_server(Settings(llama_server_bin=fake))


def test_corrupt_models_are_named(tmp_path: Path, runtime: PreparedRuntime) -> None:
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_bytes(b"<html>404</html>")
    with pytest.raises(RuntimeSetupError, match="is not a GGUF file"):
        check_gguf(not_gguf, "generation")

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(runtime.generation_model.read_bytes()[:4096])
    with pytest.raises(RuntimeSetupError, match="is corrupt"):
        check_gguf(truncated, "generation")

    with pytest.raises(RuntimeSetupError, match="does not exist"):
        check_gguf(tmp_path / "missing.gguf", "embedding")


def test_a_model_changed_after_preparation_is_refused(
    tmp_path: Path, runtime: PreparedRuntime
) -> None:
    paths = RuntimePaths(tmp_path, "test")
    paths.models_dir.mkdir(parents=True)
    copy = paths.models_dir / runtime.generation_model.name
    data = bytearray(runtime.generation_model.read_bytes())
    (paths.models_dir / "manifest.json").write_text(
        '{"%s": "%s"}' % (copy.name, "0" * 64)  # noqa: UP031 - JSON braces
    )
    copy.write_bytes(bytes(data))
    with pytest.raises(RuntimeSetupError, match="changed since it was prepared"):
        verify_prepared(copy, paths, "generation")


@pytest.mark.integration
def test_cli_reports_a_corrupt_model_without_a_traceback(
    tmp_path: Path, runtime: PreparedRuntime
) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    env = {
        **os.environ,
        "RAG_LLAMA_SERVER_BIN": str(runtime.llama_server),
        "RAG_GENERATION_MODEL": str(bad),
        "RAG_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [sys.executable, "-m", "rag", "runtime", "prepare", "--no-verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "generation model" in done.stderr and "is corrupt" in done.stderr
    assert "Traceback" not in done.stderr
