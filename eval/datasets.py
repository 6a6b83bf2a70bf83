"""Load a retrieval dataset in the BEIR layout, validating every line.

A dataset is a folder with::

    corpus.jsonl        {"_id": str, "title": str, "text": str, "metadata": {...}} per line
    queries.jsonl       {"_id": str, "text": str, "metadata": {...}} per line
    qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score, with an optional header row

Ids may be JSON strings or integers (they are kept as strings). Anything malformed raises
:class:`DatasetError`, whose message names the file and the line (1-based), so that a broken
dataset is fixed in minutes rather than debugged from a stack trace. Only the queries that have
judgements in the chosen split are evaluated, as BEIR does. Judgements that name a document
missing from the corpus are kept (they count as relevant documents never retrieved) and reported
in :attr:`Dataset.warnings`.

A corpus document may say how it is to be ingested: ``metadata.filename`` and
``metadata.content_type`` (default: ``<_id>.txt``, ``text/plain``). The golden set uses this to
ingest the sample files as what they are (Markdown, CSV, plain text).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.core.runtime.build import sha256_of

CORPUS = "corpus.jsonl"
QUERIES = "queries.jsonl"
QRELS_DIR = "qrels"
QRELS_HEADER = ("query-id", "corpus-id", "score")


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and line."""

    def __init__(self, path: Path, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    metadata: dict[str, Any]

    def content(self) -> str:
        """The text that is indexed: title and text joined by a space, as BEIR and MTEB do."""
        return f"{self.title} {self.text}".strip() if self.title else self.text

    def sha256(self) -> str:
        """Content hash of what is ingested (text and how it is to be parsed)."""
        identity = [self.content(), self.filename(), self.content_type()]
        return hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()

    def filename(self) -> str:
        return str(self.metadata.get("filename") or f"{self.id}.txt")

    def content_type(self) -> str:
        return str(self.metadata.get("content_type") or "text/plain")


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    split: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    """Only the queries judged in ``split``, in file order."""
    qrels: dict[str, dict[str, int]]
    files: dict[str, str]
    """sha256 of each file read, keyed by its path relative to the dataset folder."""
    warnings: list[str] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "split": self.split,
            "documents": len(self.corpus),
            "queries": len(self.queries),
            "judgements": sum(len(docs) for docs in self.qrels.values()),
            "sha256": dict(self.files),
        }


def load_dataset(path: Path, split: str = "test") -> Dataset:
    """Read and check a BEIR-layout dataset folder; raises :class:`DatasetError`."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(path, "is not a dataset folder (expected corpus.jsonl, queries.jsonl, "
                           "qrels/<split>.tsv)")  # fmt: skip
    corpus_path, queries_path = path / CORPUS, path / QUERIES
    qrels_path = path / QRELS_DIR / f"{split}.tsv"
    corpus = {doc.id: doc for doc in _read_corpus(corpus_path)}
    all_queries = dict(_read_queries(queries_path))
    qrels = _read_qrels(qrels_path, all_queries)
    if not qrels:
        raise DatasetError(qrels_path, "has no judgements")
    warnings = []
    missing = sorted({d for docs in qrels.values() for d in docs if d not in corpus})
    if missing:
        warnings.append(
            f"{qrels_path}: {len(missing)} judged documents are not in the corpus "
            f"(first: {missing[0]!r})"
        )
    queries = {qid: text for qid, text in all_queries.items() if qid in qrels}
    sources = (corpus_path, queries_path, qrels_path)
    files = {str(p.relative_to(path)): sha256_of(p) for p in sources}
    return Dataset(path.resolve().name, path.resolve(), split, corpus, queries, qrels, files,
                   warnings)  # fmt: skip


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DatasetError(path, "file not found")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(path, f"not UTF-8 ({exc.reason})", number) from exc
            if line.strip():
                yield number, line


def _json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    seen: set[str] = set()
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                path, f"invalid JSON: {exc.msg} (column {exc.colno})", number
            ) from exc
        if not isinstance(record, dict):
            raise DatasetError(path, "expected a JSON object", number)
        record["_id"] = _id(path, number, record)
        if record["_id"] in seen:
            raise DatasetError(path, f"duplicate _id {record['_id']!r}", number)
        seen.add(record["_id"])
        yield number, record


def _id(path: Path, number: int, record: dict[str, Any]) -> str:
    if "_id" not in record:
        raise DatasetError(path, "missing field '_id'", number)
    value = record["_id"]
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise DatasetError(path, "'_id' must be a non-empty string or an integer", number)
    return str(value)


def _string(path: Path, number: int, record: dict[str, Any], key: str, *, required: bool) -> str:
    if key not in record:
        if required:
            raise DatasetError(path, f"missing field {key!r}", number)
        return ""
    value = record[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DatasetError(path, f"field {key!r} must be a string", number)
    return value


def _metadata(path: Path, number: int, record: dict[str, Any]) -> dict[str, Any]:
    value = record.get("metadata") or {}
    if not isinstance(value, dict):
        raise DatasetError(path, "field 'metadata' must be an object", number)
    return value


def _read_corpus(path: Path) -> Iterator[Document]:
    count = 0
    for number, record in _json_records(path):
        title = _string(path, number, record, "title", required=False)
        text = _string(path, number, record, "text", required=True)
        if not (title + text).strip():
            raise DatasetError(path, "document has neither title nor text", number)
        count += 1
        yield Document(record["_id"], title, text, _metadata(path, number, record))
    if count == 0:
        raise DatasetError(path, "has no documents")


def _read_queries(path: Path) -> Iterator[tuple[str, str]]:
    for number, record in _json_records(path):
        text = _string(path, number, record, "text", required=True)
        if not text.strip():
            raise DatasetError(path, "query text is empty", number)
        yield record["_id"], text


def _read_qrels(path: Path, queries: dict[str, str]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _lines(path):
        fields = line.rstrip("\r\n").split("\t")
        if number == 1 and tuple(f.strip().lower() for f in fields) == QRELS_HEADER:
            continue
        if len(fields) != 3:
            raise DatasetError(
                path, f"expected 3 tab-separated fields (query-id, corpus-id, score), got "
                f"{len(fields)}", number,
            )  # fmt: skip
        query_id, doc_id, raw_score = (f.strip() for f in fields)
        if not query_id or not doc_id:
            raise DatasetError(path, "empty query-id or corpus-id", number)
        try:
            score = int(raw_score)
        except ValueError:
            raise DatasetError(path, f"score {raw_score!r} is not an integer", number) from None
        if query_id not in queries:
            raise DatasetError(path, f"query-id {query_id!r} is not in {QUERIES}", number)
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged and judged[doc_id] != score:
            raise DatasetError(path, f"conflicting judgements for ({query_id}, {doc_id})", number)
        judged[doc_id] = score
    return qrels
