"""The BEIR loader: a good dataset loads; every kind of malformed file names its file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.datasets import DatasetError, load_dataset

GOLDEN = Path(__file__).resolve().parents[2] / "eval" / "golden"
SAMPLES = Path(__file__).resolve().parents[2] / "rag" / "samples"


def write_dataset(
    root: Path,
    corpus: list[str] | None = None,
    queries: list[str] | None = None,
    qrels: list[str] | None = None,
) -> Path:
    docs = [
        {"_id": "d1", "title": "Alpha", "text": "first document"},
        {"_id": "d2", "title": "", "text": "second document"},
        {"_id": 3, "title": "Gamma", "text": "third", "metadata": {"x": 1}},
    ]
    qs = [
        {"_id": "q1", "text": "first?"},
        {"_id": "q2", "text": "second?"},
        {"_id": "q3", "text": "?"},
    ]
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    lines = corpus if corpus is not None else [json.dumps(d) for d in docs]
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    lines = queries if queries is not None else [json.dumps(q) for q in qs]
    (root / "queries.jsonl").write_text("\n".join(lines) + "\n")
    rows = qrels if qrels is not None else ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\t2"]
    (root / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_loads_a_well_formed_dataset(tmp_path: Path) -> None:
    dataset = load_dataset(write_dataset(tmp_path / "tiny"))
    assert dataset.name == "tiny"
    assert set(dataset.corpus) == {"d1", "d2", "3"}
    assert dataset.corpus["d1"].content() == "Alpha first document"
    assert dataset.corpus["d2"].content() == "second document"
    assert list(dataset.queries) == ["q1", "q2"]  # only judged queries
    assert dataset.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert set(dataset.files) == {"corpus.jsonl", "queries.jsonl", "qrels/test.tsv"}
    assert dataset.warnings == []


def test_judged_documents_missing_from_the_corpus_are_a_warning(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", qrels=["q1\td1\t1", "q1\tnowhere\t1"])
    dataset = load_dataset(root)
    assert "not in the corpus" in dataset.warnings[0]
    assert dataset.qrels["q1"] == {"d1": 1, "nowhere": 1}


@pytest.mark.parametrize(
    ("kind", "lines", "file", "line", "message"),
    [
        ("corpus", ['{"_id": "d1", "text": "a"}', '{"_id": "d2", "text": '], "corpus.jsonl", 2,
         "invalid JSON"),
        ("corpus", ['{"_id": "d1", "text": "a"}', '{"title": "t", "text": "b"}'], "corpus.jsonl", 2,
         "missing field '_id'"),
        ("corpus", ['{"_id": "d1", "title": "t"}'], "corpus.jsonl", 1, "missing field 'text'"),
        ("corpus", ['{"_id": "d1", "text": 5}'], "corpus.jsonl", 1, "must be a string"),
        ("corpus", ['{"_id": "d1", "text": "a"}', '{"_id": "d1", "text": "b"}'], "corpus.jsonl", 2,
         "duplicate _id"),
        ("corpus", ['["not", "an", "object"]'], "corpus.jsonl", 1, "expected a JSON object"),
        ("queries", ['{"_id": "q1", "text": "x"}', '{"_id": "q2"}'], "queries.jsonl", 2,
         "missing field 'text'"),
        ("queries", ['{"_id": "q1", "text": "   "}'], "queries.jsonl", 1, "query text is empty"),
        ("qrels", ["query-id\tcorpus-id\tscore", "q1\td1"], "qrels/test.tsv", 2,
         "expected 3 tab-separated fields"),
        ("qrels", ["q1\td1\t1", "q2\td2\thigh"], "qrels/test.tsv", 2, "is not an integer"),
        ("qrels", ["q1\td1\t1", "q9\td2\t1"], "qrels/test.tsv", 2, "query-id 'q9' is not in"),
        ("qrels", ["q1\td1\t1", "q1\td1\t0"], "qrels/test.tsv", 2, "conflicting judgements"),
    ],
)  # fmt: skip
def test_malformed_files_name_the_file_and_line(
    tmp_path: Path, kind: str, lines: list[str], file: str, line: int, message: str
) -> None:
    root = write_dataset(tmp_path / "bad", **{kind: lines})  # type: ignore[arg-type]
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    assert caught.value.path == root / file
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{root / file}:{line}: ")
    assert message in str(caught.value)


def test_missing_files_and_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is not a dataset folder"):
        load_dataset(tmp_path / "nowhere")
    root = write_dataset(tmp_path / "d")
    with pytest.raises(DatasetError, match=r"qrels/dev\.tsv: file not found"):
        load_dataset(root, split="dev")
    (root / "corpus.jsonl").write_bytes(b'{"_id": "d1", "text": "\xff"}\n')
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:1: not UTF-8"):
        load_dataset(root)


def test_the_golden_set_matches_the_sample_documents() -> None:
    dataset = load_dataset(GOLDEN)
    for doc in dataset.corpus.values():
        assert doc.text == (SAMPLES / doc.id).read_text(encoding="utf-8"), doc.id
        assert doc.filename() == doc.id
    assert {doc.id for doc in dataset.corpus.values()} <= {p.name for p in SAMPLES.iterdir()}
    judged = {d for docs in dataset.qrels.values() for d in docs}
    assert judged == set(dataset.corpus)  # every sample answers at least one question
