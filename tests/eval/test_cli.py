"""``rag eval`` as scripts use it: the last line is the JSON report's path; bad data exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer

GOLDEN = Path(__file__).resolve().parents[2] / "eval" / "golden"


def rag(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rag", "eval", *args], capture_output=True, text=True,
        timeout=600, env={**os.environ, **(env or {})}, check=False,
    )  # fmt: skip


def test_malformed_dataset_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text"\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a?"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    done = rag("run", "--dataset", str(tmp_path))
    assert done.returncode == 2
    assert f"{tmp_path / 'corpus.jsonl'}:2: invalid JSON" in " ".join(done.stderr.split())


@pytest.mark.integration
def test_run_prints_the_report_path_last_and_compare_reads_it(
    tmp_path: Path, embedding_server: RunningServer
) -> None:
    env = {"RAG_EVAL_DIR": str(tmp_path / "eval"), "RAG_DATA_DIR": str(tmp_path / "data")}
    done = rag(
        "run", "--dataset", str(GOLDEN), "--retrieval", "hybrid", "--output", str(tmp_path),
        "--url", embedding_server.url, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.parent == tmp_path
    report = json.loads(path.read_text())
    assert {"ndcg@10", "recall@100", "mrr@10", "recall@10", "map"} <= set(report["metrics"])
    assert report["settings"]["retrieval"] == "hybrid"
    assert path.with_suffix(".md").is_file()
    compared = rag("compare", str(path), str(path), "--plot", str(tmp_path / "runs.png"))
    assert compared.returncode == 0, compared.stderr
    assert "No regression" in compared.stdout
    assert (tmp_path / "runs.png").is_file()
