"""Chunking: parsed documents into token-sized, structure-aware chunks, and chunks into pieces that
fit the embedding model.

:func:`chunk_document` sizes chunks in tiktoken cl100k tokens (:mod:`ingest.tokens`). The rules:

* Chunks never cut a word: every chunk starts and ends at a word boundary of the document text
  (``doc.text[chunk.char_start - 1]`` and ``doc.text[chunk.char_end]`` are whitespace or outside
  the text). Within a size, a chunk ends preferably at a paragraph end, then a sentence end, then a
  line end, as long as it stays at least half full. No chunk exceeds ``size_tokens`` unless it is
  a single word that does on its own.
* Consecutive sections of the same *flow* (same page, heading path, kind and CSV header) are
  packed together; flows are never merged, so a chunk never spans two PDF pages and keeps an exact
  heading path. One exception: a flow made only of short heading lines (a heading directly followed
  by a sub-heading) is put in front of the nested flow that follows, on the same page.
* Consecutive chunks of one text flow overlap by up to ``overlap_tokens`` (whole words, at most
  half of ``size_tokens``).
* Tables (``kind="table"``, one readable line per row) are chunked at row lines, without overlap;
  a single row longer than the size is split at words.
* CSV rows (``kind="rows"``) are grouped ``rows_per_chunk`` at a time (0: as many as fit) and
  every chunk's text is the header line, a newline, then the rows. Its offsets cover the rows only,
  so ``text`` ends with ``doc.text[char_start:char_end]``; for every other chunk they are equal.
  A header longer than half the chunk size is not repeated: it is chunked once, as text, in front
  of the rows, and the rows are packed without it.

:func:`split_to_fit` splits chunks that the embedding model measures as too long. Everything here
is synchronous, CPU-bound and picklable: callers run it in a process pool.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from ingest.parsing.model import ROWS, TABLE, TEXT, ParsedDocument, Section
from ingest.tokens import count_tokens

WORD, LINE, SENTENCE, PARAGRAPH = 0, 1, 2, 3
"""Strength of the break after a unit, weakest first."""

_WORD = re.compile(r"\S+")
_CELL = re.compile(r"[^\s,;\t|]+[,;\t|]*|[,;\t|]+")
"""A word or CSV cell with the delimiters after it: a CSV line whose "words" are too long for a
chunk (cells without spaces between them) is cut between cells, never in one."""
_LINE = re.compile(r"[^\n]*\S[^\n]*")
_SENTENCE_END = re.compile("[.!?;:\u2026\u3002\uff01\uff1f][\"'\u201d\u2019\u00bb)\\]]*$")
_MIN_FILL = 0.5
_HEADING_TOKENS = 32
_FIT_MARGIN = 0.85
_EVEN_SLACK = 1.1
_MAX_HEADER_SHARE = 0.5
"""A CSV header longer than this share of the chunk size is not repeated in every chunk."""


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    page: int | None
    heading_path: tuple[str, ...]
    char_start: int
    char_end: int
    tokens: int
    """tiktoken cl100k count of ``text``."""


@dataclass(frozen=True)
class ChunkingOptions:
    size_tokens: int = 256
    overlap_tokens: int = 32
    rows_per_chunk: int = 0

    def __post_init__(self) -> None:
        if self.size_tokens < 1:
            raise ValueError("size_tokens must be at least 1")
        if not 0 <= self.overlap_tokens < self.size_tokens:
            raise ValueError("overlap_tokens must be at least 0 and less than size_tokens")
        if self.rows_per_chunk < 0:
            raise ValueError("rows_per_chunk must be at least 0 (0: as many as fit)")


class _Unit(NamedTuple):
    start: int
    end: int
    tokens: int  # tokens of the unit with the whitespace before it
    brk: int  # strength of the break after it


@functools.lru_cache(maxsize=1 << 16)
def _piece_tokens(piece: str) -> int:
    """Tokens of one word with the whitespace before it; words repeat, so this is cached."""
    return count_tokens(piece)


def _word_units(
    text: str, start: int, end: int, last_break: int = PARAGRAPH, pattern: re.Pattern[str] = _WORD
) -> list[_Unit]:
    """Words of ``text[start:end]`` (or other ``pattern`` matches) with their token costs and the
    breaks after them."""
    spans = [match.span() for match in pattern.finditer(text, start, end)]
    if not spans:
        return []
    pieces, previous = [], start
    for _, e in spans:
        pieces.append(text[previous:e])
        previous = e
    counts = [_piece_tokens(piece) for piece in pieces]
    units = []
    for number, ((s, e), tokens) in enumerate(zip(spans, counts, strict=True)):
        if number + 1 == len(spans):
            brk = last_break
        else:
            gap = text[e : spans[number + 1][0]]
            if gap.count("\n") >= 2:
                brk = PARAGRAPH
            elif _SENTENCE_END.search(text, s, e):
                brk = SENTENCE
            else:
                brk = LINE if "\n" in gap else WORD
        units.append(_Unit(s, e, tokens, brk))
    return units


def _line_units(text: str, start: int, end: int, size: int) -> list[_Unit]:
    """Units of a long CSV line: its words, or its cells where a word alone passes ``size``."""
    units = _word_units(text, start, end)
    if any(unit.tokens > size for unit in units):
        units = _word_units(text, start, end, pattern=_CELL)
    return units


def _best_cut(units: list[_Unit], cum: list[int], i: int, j: int, size: int, floor: int) -> int:
    """End (exclusive) of the chunk starting at unit ``i`` that may extend to unit ``j``."""
    best, best_brk = j, -1
    for k in range(j, max(i, floor), -1):
        if cum[k] - cum[i] < _MIN_FILL * size:
            break
        if units[k - 1].brk > best_brk:
            best, best_brk = k, units[k - 1].brk
    return best


def _pack(text: str, units: list[_Unit], size: int, overlap: int) -> list[tuple[int, int]]:
    """Character ranges of chunks over ``units`` (see the module docstring for the rules)."""
    cum = [0]
    for unit in units:
        cum.append(cum[-1] + unit.tokens)
    overlap = min(overlap, size // 2)
    ranges: list[tuple[int, int]] = []
    n, i, floor = len(units), 0, 0
    while i < n:
        j = max(i, floor) + 1
        while j < n and cum[j + 1] - cum[i] <= size:
            j += 1
        k = j if j >= n else _best_cut(units, cum, i, j, size, floor)
        while (
            k - 1 > max(i, floor) and count_tokens(text[units[i].start : units[k - 1].end]) > size
        ):
            k -= 1
        ranges.append((units[i].start, units[k - 1].end))
        if k >= n:
            break
        back = k
        while back - 1 > i and cum[k] - cum[back - 1] <= overlap:
            back -= 1
        i, floor = (back, k) if cum[k + 1] - cum[back] <= size else (k, k)
    return ranges


@dataclass
class _Flow:
    page: int | None
    heading_path: tuple[str, ...]
    kind: str
    header: str | None
    sections: list[Section] = field(default_factory=list)

    def accepts(self, section: Section) -> bool:
        key = (section.page, section.heading_path, section.kind, section.header)
        return key == (self.page, self.heading_path, self.kind, self.header)

    def leads_into(self, following: _Flow) -> bool:
        """True if this flow is only short heading lines above the nested ``following`` flow."""
        path = self.heading_path
        return (
            self.kind == following.kind == TEXT
            and self.page == following.page
            and bool(path)
            and following.heading_path[: len(path)] == path
            and len(following.heading_path) > len(path)
            and all(self._is_heading(section) for section in self.sections)
        )

    def _is_heading(self, section: Section) -> bool:
        return (
            "\n" not in section.text
            and any(title in section.text for title in self.heading_path)
            and count_tokens(section.text) <= _HEADING_TOKENS
        )


def _flows(sections: Iterable[Section]) -> list[_Flow]:
    flows: list[_Flow] = []
    for section in sections:
        if not section.text.strip():
            continue
        if not flows or not flows[-1].accepts(section):
            flows.append(_Flow(section.page, section.heading_path, section.kind, section.header))
        flows[-1].sections.append(section)
    merged: list[_Flow] = []
    for number, flow in enumerate(flows):
        following = flows[number + 1] if number + 1 < len(flows) else None
        if following is not None and flow.leads_into(following):
            following.sections[:0] = flow.sections
        else:
            merged.append(flow)
    return merged


def _table_units(text: str, section: Section, size: int) -> list[_Unit]:
    units: list[_Unit] = []
    for match in _LINE.finditer(text, section.char_start, section.char_end):
        start = match.start() + len(match.group()) - len(match.group().lstrip())
        end = match.start() + len(match.group().rstrip())
        tokens = count_tokens(text[start:end]) + 1
        if tokens > size:
            units += _word_units(text, start, end)
        else:
            units.append(_Unit(start, end, tokens, PARAGRAPH))
    return units


def _text_ranges(text: str, flow: _Flow, options: ChunkingOptions) -> list[tuple[int, int]]:
    units: list[_Unit] = []
    for section in flow.sections:
        if flow.kind == TABLE:
            units += _table_units(text, section, options.size_tokens)
        else:
            units += _word_units(text, section.char_start, section.char_end)
    overlap = 0 if flow.kind == TABLE else options.overlap_tokens
    return _pack(text, units, options.size_tokens, overlap)


def _row_groups(rows: list[Section], budget: int, limit: int) -> list[list[Section]]:
    """Consecutive rows grouped up to ``limit`` rows and (estimated) ``budget`` tokens."""
    groups: list[list[Section]] = []
    used = 0
    for row in rows:
        tokens = count_tokens(row.text) + 1
        if not groups or len(groups[-1]) >= limit or used + tokens > budget:
            groups.append([])
            used = 0
        groups[-1].append(row)
        used += tokens
    return groups


def _row_chunks(text: str, flow: _Flow, options: ChunkingOptions) -> list[tuple[str, int, int]]:
    """``(chunk text, start, end)`` of CSV row groups, each starting with the header line."""
    prefix = f"{flow.header}\n" if flow.header else ""
    size = options.size_tokens
    out: list[tuple[str, int, int]] = []
    if count_tokens(prefix) > size * _MAX_HEADER_SHARE:
        # a header this long would crowd out the rows (or be cut into crumbs with them): it
        # becomes chunks of its own, once, and the rows go without it
        start = text.find(flow.header or "")
        if start >= 0:
            units = _line_units(text, start, start + len(flow.header or ""), size)
            out += [(text[s:e], s, e) for s, e in _pack(text, units, size, 0)]
        prefix = ""
    budget = max(1, size - count_tokens(prefix))
    limit = options.rows_per_chunk or len(flow.sections)
    for group in _row_groups(flow.sections, budget, limit):
        while group:
            take = len(group)
            while take > 1 and count_tokens(prefix + _span(text, group[:take])) > size:
                take -= 1
            if count_tokens(prefix + _span(text, group[:1])) > size:  # one row too long: cells
                units = _line_units(text, group[0].char_start, group[0].char_end, budget)
                out += [(prefix + text[s:e], s, e) for s, e in _pack(text, units, budget, 0)]
            else:
                out.append(
                    (
                        prefix + _span(text, group[:take]),
                        group[0].char_start,
                        group[take - 1].char_end,
                    )
                )
            group = group[take:]
    return out


def _span(text: str, rows: list[Section]) -> str:
    return text[rows[0].char_start : rows[-1].char_end]


def chunk_document(doc: ParsedDocument, options: ChunkingOptions) -> list[Chunk]:
    """The chunks of ``doc`` in reading order, numbered from 0."""
    chunks: list[Chunk] = []
    for flow in _flows(doc.sections):
        if flow.kind == ROWS:
            pieces = _row_chunks(doc.text, flow, options)
        else:
            pieces = [(doc.text[s:e], s, e) for s, e in _text_ranges(doc.text, flow, options)]
        for chunk_text, start, end in pieces:
            chunks.append(
                Chunk(
                    index=len(chunks),
                    text=chunk_text,
                    page=flow.page,
                    heading_path=flow.heading_path,
                    char_start=start,
                    char_end=end,
                    tokens=count_tokens(chunk_text),
                )
            )
    return chunks


def _split_chunk(chunk: Chunk, length: int, max_tokens: int) -> list[Chunk]:
    """Pieces of one over-long chunk, each expected to measure below ``max_tokens``."""
    body_chars = chunk.char_end - chunk.char_start
    if not 0 < body_chars <= len(chunk.text):
        raise ValueError(f"chunk {chunk.index} has offsets that do not match its text")
    prefix, body = chunk.text[:-body_chars], chunk.text[-body_chars:]
    # Model tokens per tiktoken token for this chunk: size the pieces in tiktoken tokens.
    ratio = length / max(1, count_tokens(chunk.text))
    budget = math.floor(_FIT_MARGIN * max_tokens / ratio) - count_tokens(prefix)
    if budget < max(1, count_tokens(body) // 8):  # the prefix leaves no room: drop it
        prefix, budget = "", math.floor(_FIT_MARGIN * max_tokens / ratio)
    units = _word_units(body, 0, len(body))
    parts = max(2, math.ceil(length / (_FIT_MARGIN * max_tokens)))
    if len(units) > 1:
        # Aim at ``parts`` pieces of similar size rather than full pieces and a small rest.
        body_tokens = sum(unit.tokens for unit in units)
        even = math.ceil(_EVEN_SLACK * body_tokens / parts)
        budget = max(1, min(budget, even, body_tokens - 1))
        ranges = _pack(body, units, budget, 0)
        if len(ranges) == 1:  # the estimate said it fits: halve at the best break instead
            middle = len(units) // 2
            ranges = [(0, units[middle - 1].end), (units[middle].start, units[-1].end)]
    else:
        # One over-long word: cut by characters, the last resort.
        step = max(1, math.ceil(len(body) / parts))
        ranges = [(s, min(s + step, len(body))) for s in range(0, len(body), step)]
    return [
        replace(
            chunk,
            text=prefix + body[s:e],
            char_start=chunk.char_start + s,
            char_end=chunk.char_start + e,
            tokens=count_tokens(prefix + body[s:e]),
        )
        for s, e in ranges
    ]


def split_to_fit(chunks: list[Chunk], lengths: list[int], max_tokens: int) -> list[Chunk]:
    """Split every chunk whose measured length exceeds ``max_tokens``; renumber all chunks.

    ``lengths[i]`` is the embedding model's exact token count of ``chunks[i].text`` (from the
    embedding server's ``/tokenize``). An over-long chunk is split at sentence, then word
    boundaries (never inside a word) into pieces whose tiktoken size is scaled by that chunk's
    model/tiktoken ratio, with a margin; offsets stay exact and a CSV chunk's header is repeated
    in each piece (dropped if the header alone is too long). The ratio is an estimate, so callers
    measure the returned chunks again and call this again until every length fits::

        lengths = measure(chunks)
        while any(n > limit for n in lengths):
            chunks = split_to_fit(chunks, lengths, limit)
            lengths = measure(chunks)

    This converges: an over-long chunk always becomes at least two smaller pieces, and a chunk
    that is a single word is cut by characters as a last resort.
    """
    if len(lengths) != len(chunks):
        raise ValueError("need exactly one length per chunk")
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    out: list[Chunk] = []
    for chunk, length in zip(chunks, lengths, strict=True):
        out += [chunk] if length <= max_tokens else _split_chunk(chunk, length, max_tokens)
    return [replace(chunk, index=number) for number, chunk in enumerate(out)]
