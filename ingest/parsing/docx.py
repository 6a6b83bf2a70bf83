"""DOCX parsing with python-docx: body paragraphs and tables in reading order (content controls
included).

Paragraphs styled ``Title`` (level 0) or ``Heading N`` build the heading path; every paragraph,
heading paragraphs included, is a ``"text"`` section carrying the path it sits under (a heading
carries the path ending with itself). Each table is one ``"table"`` section with one readable line
per row: when the table has a header row and more rows, each data row reads
``"Header A: value; Header B: value"`` (empty cells left out, missing headers named
``Column N``); a one-row table reads ``"value | value"``. Horizontally merged cells count once.
A file python-docx cannot open is ``ParseError("corrupt")``; an archive whose compressed parts
unpack to more than ``limits.max_expansion`` times their size (a zip bomb) is
``ParseError("too_large")``.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator

import docx
from docx.document import Document as DocxDocument
from docx.opc.exceptions import PackageNotFoundError
from docx.oxml.ns import qn
from docx.oxml.table import CT_Tbl
from docx.oxml.text.paragraph import CT_P
from docx.oxml.xmlchemy import BaseOxmlElement
from docx.table import Table, _Row
from docx.text.paragraph import Paragraph

from ingest.parsing.model import (
    DEFAULT_LIMITS,
    EXPANSION_ALLOWANCE,
    TABLE,
    ParsedDocument,
    ParseError,
    ParseLimits,
    Progress,
    TextBuilder,
)

_HEADING_STYLE = re.compile(r"^Heading ([1-9])$")
_WHITESPACE = re.compile(r"\s+")
_SDT, _SDT_CONTENT = qn("w:sdt"), qn("w:sdtContent")
_OPEN_ERRORS = (
    PackageNotFoundError,
    zipfile.BadZipFile,
    KeyError,
    ValueError,
    SyntaxError,  # lxml's XMLSyntaxError derives from it
    OSError,
    EOFError,
    zipfile.LargeZipFile,
)


def _one_line(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def _heading_level(paragraph: Paragraph) -> int | None:
    style = paragraph.style
    name = style.name if style is not None else None
    if name == "Title":
        return 0
    match = _HEADING_STYLE.match(name or "")
    return int(match.group(1)) if match else None


def _row_texts(row: _Row) -> list[str]:
    """Texts of a row's cells; a horizontally merged cell (repeated by python-docx) counts once."""
    seen: set[int] = set()
    texts: list[str] = []
    for cell in row.cells:
        element = cell._tc
        if id(element) not in seen:
            seen.add(id(element))
            texts.append(_one_line(cell.text))
    return texts


def table_lines(table: Table) -> list[str]:
    """The table as readable lines, one per row (see the module docstring)."""
    rows = [texts for texts in map(_row_texts, table.rows) if any(texts)]
    if not rows:
        return []
    if len(rows) == 1:
        return [" | ".join(value for value in rows[0] if value)]
    header, lines = rows[0], []
    for row in rows[1:]:
        pairs = []
        for number, value in enumerate(row):
            if not value:
                continue
            name = header[number] if number < len(header) and header[number] else None
            pairs.append(f"{name or f'Column {number + 1}'}: {value}")
        lines.append("; ".join(pairs))
    return [line for line in lines if line]


def _blocks(container: BaseOxmlElement, parent: DocxDocument) -> Iterator[Paragraph | Table]:
    """Paragraphs and tables in body order, including those inside content controls
    (``w:sdt``, used by cover pages and many templates), which python-docx's own iteration skips.
    """
    for child in container.iterchildren():
        if isinstance(child, CT_P):
            yield Paragraph(child, parent)
        elif isinstance(child, CT_Tbl):
            yield Table(child, parent)
        elif child.tag == _SDT:
            content = child.find(_SDT_CONTENT)
            if content is not None:
                yield from _blocks(content, parent)


def _check_expansion(data: bytes, filename: str, limits: ParseLimits) -> None:
    """Refuse archives that expand far beyond any real document (zip bombs).

    Only compressed parts are held to the ratio, against their own compressed size: a large
    stored (uncompressed) part neither needs the allowance nor raises it for the others.
    ``file_size`` is what zipfile will decompress at most, so the headers cannot lie past it.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            parts = archive.infolist()
    except _OPEN_ERRORS as exc:
        raise ParseError("corrupt", f"{filename} is not a readable DOCX document") from exc
    compressed = [part for part in parts if part.compress_type != zipfile.ZIP_STORED]
    expanded = sum(part.file_size for part in compressed)
    allowed = limits.max_expansion * sum(part.compress_size for part in compressed)
    if expanded > allowed + EXPANSION_ALLOWANCE:
        raise ParseError(
            "too_large",
            f"{filename} expands to {expanded / 2**20:.0f} MiB when unpacked, more than "
            f"{limits.max_expansion:g} times its compressed parts (RAG_MAX_DECOMPRESSION_RATIO)",
        )


def parse_docx(
    data: bytes,
    content_type: str,
    filename: str,
    limits: ParseLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> ParsedDocument:
    """Paragraphs and tables in body order, with heading paths."""
    _check_expansion(data, filename, limits)
    try:
        document = docx.Document(io.BytesIO(data))
    except _OPEN_ERRORS as exc:
        raise ParseError("corrupt", f"{filename} is not a readable DOCX document") from exc
    builder = TextBuilder()
    stack: list[tuple[int, str]] = []
    try:
        for block in _blocks(document.element.body, document):
            if isinstance(block, Table):
                path = tuple(title for _, title in stack)
                builder.add("\n".join(table_lines(block)), kind=TABLE, heading_path=path)
                continue
            text = _one_line(block.text)
            level = _heading_level(block)
            if level is not None and text:
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, text))
            builder.add(text, heading_path=tuple(title for _, title in stack))
    except (KeyError, ValueError, IndexError, AttributeError, SyntaxError) as exc:
        raise ParseError("corrupt", f"{filename} has a damaged document body") from exc
    if not builder.sections:
        raise ParseError("empty", f"{filename} contains no text")
    return builder.build(content_type)
