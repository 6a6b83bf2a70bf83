"""Parsing of uploaded documents into text with structure: the one entry point and its model.

:func:`parse_document` picks the parser for a content type detected by
:func:`ingest.detect.detect_content_type`. Parsing is pure and CPU-bound (bytes in, a
:class:`ParsedDocument` out, no I/O): callers run it in a process pool. Every failure is a
:class:`ParseError` with a machine-readable ``reason``.
"""

from __future__ import annotations

from typing import Protocol

from ingest.detect import CSV, DOC, DOCX, MARKDOWN, PDF, TEXT
from ingest.parsing.csv import parse_csv
from ingest.parsing.doc import parse_doc
from ingest.parsing.docx import parse_docx
from ingest.parsing.model import ParsedDocument, ParseError, ParseLimits, Progress, Section
from ingest.parsing.pdf import parse_pdf
from ingest.parsing.text import parse_markdown, parse_text

__all__ = ["ParseError", "ParseLimits", "ParsedDocument", "Section", "parse_document"]


class _Parser(Protocol):
    def __call__(
        self,
        data: bytes,
        content_type: str,
        filename: str,
        limits: ParseLimits = ...,
        progress: Progress | None = ...,
    ) -> ParsedDocument: ...


_PARSERS: dict[str, _Parser] = {
    PDF: parse_pdf,
    DOCX: parse_docx,
    DOC: parse_doc,
    CSV: parse_csv,
    MARKDOWN: parse_markdown,
    TEXT: parse_text,
}


def parse_document(
    data: bytes,
    content_type: str,
    filename: str,
    limits: ParseLimits | None = None,
    progress: Progress | None = None,
) -> ParsedDocument:
    """Parse ``data`` as ``content_type`` (one of the types in :mod:`ingest.detect`) within
    ``limits``; ``progress(stage, done, total)`` hears of long parsers' progress (OCR pages).

    Raises :class:`ParseError`; an unknown ``content_type`` is a :class:`ValueError` (a bug in the
    caller, since detection only returns known types).
    """
    if not data:
        raise ParseError("empty", f"{filename} is empty")
    parser = _PARSERS.get(content_type.split(";")[0].strip().lower())
    if parser is None:
        raise ValueError(f"no parser for content type {content_type!r}")
    return parser(data, content_type, filename, limits or ParseLimits(), progress)
