"""Plain-text and Markdown parsing, and the text decoding every text-like parser shares.

Bytes are decoded as UTF-8 (with or without BOM) when they are valid UTF-8, otherwise with the
encoding charset-normalizer detects (Windows-1252 / Latin-1 preferred among equally good
guesses). Text is normalised (NULs and other control characters removed, line endings made
``\\n``) and then kept as it is: sections are ranges of it.

Plain text is split into paragraphs on blank lines. Markdown headings (ATX ``#`` lines, and setext
lines underlined with ``===``/``---`` when the text is a single line; never inside fenced code
blocks) build ``heading_path``; each heading line is its own section carrying its own path, and
the paragraphs under it carry the same path.
"""

from __future__ import annotations

import codecs
import re

from charset_normalizer import CharsetMatch, from_bytes

from ingest.parsing.model import (
    DEFAULT_LIMITS,
    TEXT,
    ParsedDocument,
    ParseError,
    ParseLimits,
    Progress,
    Section,
)

_LINE_BREAKS = str.maketrans(
    {"\r": "\n", "\x0b": "\n", "\x85": "\n", "\u2028": "\n", "\u2029": "\n\n", "\x0c": "\n\n"}
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_PREFERRED = ("utf_8", "cp1252", "latin_1", "iso8859_15")
_TIE = 0.01
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes, filename: str) -> str:
    """Decode bytes of a text file, or raise ``ParseError("undecodable")``."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as exc:
                raise _undecodable(filename) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise _undecodable(filename)
    # Short samples often fit several single-byte code pages equally well (cp1250 reads a
    # Latin-1 "è" as "č"); among equally good candidates prefer the common Western ones.
    tied = [
        match
        for match in matches
        if match.chaos <= best.chaos + _TIE and match.coherence >= best.coherence - _TIE
    ]
    return str(min(tied, key=_preference))


def _preference(match: CharsetMatch) -> int:
    encoding = match.encoding
    return _PREFERRED.index(encoding) if encoding in _PREFERRED else len(_PREFERRED)


def _undecodable(filename: str) -> ParseError:
    return ParseError("undecodable", f"{filename} is not text in any encoding that was recognised")


def normalise(text: str) -> str:
    """Line endings (CR LF, CR, vertical tab, NEL, Unicode line/paragraph separators) to ``\\n``,
    form feeds to blank lines, NULs and other control characters removed."""
    text = text.replace("\r\n", "\n").translate(_LINE_BREAKS)
    return _CONTROL.sub("", text)


def paragraph_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each blank-line-separated paragraph of ``text[start:end]``, stripped."""
    spans: list[tuple[int, int]] = []
    cursor = start
    for match in _BLANK_LINES.finditer(text, start, end):
        spans.append((cursor, match.start()))
        cursor = match.end()
    spans.append((cursor, end))
    stripped = []
    for s, e in spans:
        piece = text[s:e]
        lead = len(piece) - len(piece.lstrip())
        trail = len(piece) - len(piece.rstrip())
        if e - trail > s + lead:
            stripped.append((s + lead, e - trail))
    return stripped


def _sections(
    text: str, spans: list[tuple[int, int]], heading_path: tuple[str, ...]
) -> list[Section]:
    return [Section(text[s:e], None, heading_path, TEXT, s, e) for s, e in spans]


def _require_text(text: str, filename: str) -> None:
    if not text.strip():
        raise ParseError("empty", f"{filename} contains no text")


def parse_text(
    data: bytes,
    content_type: str,
    filename: str,
    limits: ParseLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> ParsedDocument:
    """Plain text: one section per paragraph."""
    text = normalise(decode_text(data, filename))
    _require_text(text, filename)
    sections = _sections(text, paragraph_spans(text, 0, len(text)), ())
    return ParsedDocument(text, sections, None, content_type)


def _heading(
    content: str, line_start: int, previous: tuple[int, str] | None
) -> tuple[int, str, int] | None:
    """``(level, title, start)`` if this line ends a heading; ``start`` is where it begins."""
    atx = _ATX_HEADING.match(content)
    if atx:
        start = line_start + len(content) - len(content.lstrip())
        return len(atx.group(1)), (atx.group(2) or "").strip(), start
    if previous is not None and _SETEXT_UNDERLINE.match(content):
        level = 1 if content.strip()[0] == "=" else 2
        return level, previous[1].strip(), previous[0]
    return None


def parse_markdown(
    data: bytes,
    content_type: str,
    filename: str,
    limits: ParseLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> ParsedDocument:
    """Markdown: ATX (``#`` .. ``######``) and setext headings build the heading path."""
    text = normalise(decode_text(data, filename))
    _require_text(text, filename)
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body_start = offset = 0
    fence: str | None = None
    # The previous line when it is a paragraph's first line: a setext underline may follow it.
    previous: tuple[int, str] | None = None
    after_blank = True
    for line in text.splitlines(keepends=True):
        line_start, offset = offset, offset + len(line)
        content = line.rstrip("\n")
        fence_match = _FENCE.match(content)
        if fence_match:
            marker = fence_match.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
            previous, after_blank = None, False
            continue
        heading = None if fence else _heading(content, line_start, previous)
        previous = (line_start, content) if after_blank and content.strip() and not fence else None
        after_blank = not content.strip()
        if heading is None:
            continue
        level, title, start = heading
        sections += _sections(text, paragraph_spans(text, body_start, start), _path(stack))
        while stack and stack[-1][0] >= level:
            stack.pop()
        if title:
            stack.append((level, title))
            end = line_start + len(content.rstrip())
            sections.append(Section(text[start:end], None, _path(stack), TEXT, start, end))
        body_start, previous, after_blank = offset, None, True
    sections += _sections(text, paragraph_spans(text, body_start, len(text)), _path(stack))
    return ParsedDocument(text, sections, None, content_type)


def _path(stack: list[tuple[int, str]]) -> tuple[str, ...]:
    return tuple(title for _, title in stack)
