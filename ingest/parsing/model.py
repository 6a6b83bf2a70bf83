"""The parsed-document model every parser returns, and the parsers' one error type.

A :class:`ParsedDocument` holds the full extracted text and, in reading order, the
:class:`Section` pieces whose ``char_start``/``char_end`` offsets point into that text
(``doc.text[s.char_start:s.char_end] == s.text`` always holds). :class:`TextBuilder` is the
helper parsers use to keep that invariant while they assemble the text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

TEXT, TABLE, ROWS = "text", "table", "rows"
"""Values of :attr:`Section.kind`."""


@dataclass(frozen=True)
class Section:
    """A piece of the document in reading order.

    ``kind`` is ``"text"`` (prose), ``"table"`` (one readable line per table row) or ``"rows"``
    (CSV data rows; ``header`` holds the header line to repeat at the top of every chunk).
    """

    text: str
    page: int | None
    heading_path: tuple[str, ...]
    kind: str
    char_start: int
    char_end: int
    header: str | None = None


@dataclass(frozen=True)
class ParsedDocument:
    text: str
    sections: list[Section]
    pages: int | None
    content_type: str


@dataclass(frozen=True)
class ParseLimits:
    """What one document may cost to parse (the deadline and the memory cap are the parse
    pool's: :mod:`ingest.parsepool`)."""

    max_pages: int = 2000
    """More pages than this: ``ParseError("too_many_pages")``."""
    max_expansion: float = 100.0
    """Compressed parts of an archive (DOCX) may unpack to at most this many times their
    compressed size, plus :data:`EXPANSION_ALLOWANCE`; stored parts count at their own size and
    earn no allowance: ``ParseError("too_large")``."""
    ocr: bool = True
    """Recognise PDF pages that have images but no text layer (:mod:`ingest.parsing.ocr`)."""
    ocr_dpi: int = 200
    ocr_language: str = "eng"


EXPANSION_ALLOWANCE = 4 * 2**20
DEFAULT_LIMITS = ParseLimits()

Progress = Callable[[str, int, int], None]
"""Called by a parser with ``(stage, done, total)`` as it advances (``"ocr"``: pages)."""


class ParseError(Exception):
    """The document cannot be parsed.

    ``reason`` is short and machine-readable: ``"encrypted"``, ``"corrupt"``, ``"no_text"``,
    ``"empty"``, ``"undecodable"``, ``"too_many_pages"`` or ``"too_large"``; ``str(error)`` is a
    readable message for a person.
    Picklable, so it crosses a process pool intact.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[ParseError], tuple[str, str]]:
        return (type(self), (self.reason, self.message))


@dataclass
class TextBuilder:
    """Appends section texts to a growing document text, separated by blank lines."""

    separator: str = "\n\n"
    _parts: list[str] = field(default_factory=list)
    _length: int = 0
    sections: list[Section] = field(default_factory=list)

    def add_text(self, text: str) -> tuple[int, int]:
        """Append raw text that belongs to no section (a CSV header); returns its offsets."""
        if self._parts:
            self._parts.append(self.separator)
            self._length += len(self.separator)
        start = self._length
        self._parts.append(text)
        self._length += len(text)
        return start, self._length

    def add(
        self,
        text: str,
        *,
        kind: str = TEXT,
        page: int | None = None,
        heading_path: tuple[str, ...] = (),
        header: str | None = None,
    ) -> None:
        """Append one section; empty or whitespace-only text is dropped."""
        text = text.strip()
        if not text:
            return
        start, end = self.add_text(text)
        self.sections.append(Section(text, page, heading_path, kind, start, end, header))

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def build(self, content_type: str, pages: int | None = None) -> ParsedDocument:
        return ParsedDocument(self.text, list(self.sections), pages, content_type)
