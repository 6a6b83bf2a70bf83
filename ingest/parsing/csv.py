"""CSV parsing: encoding and delimiter detected, one ``"rows"`` section per data row.

The encoding comes from :func:`ingest.parsing.text.decode_text` (UTF-8, else charset-normalizer);
the delimiter from :class:`csv.Sniffer` over the first lines (``,`` ``;`` tab ``|``), falling back
to ``,``. The first non-empty row is the header. Rows are re-written with the detected delimiter
(cells stripped, line breaks inside cells made spaces, quoting only where needed) so that the
document text is the header line followed by one line per row; each row's section carries the
header line for the chunker to repeat. Ragged rows are kept as they are (short rows are not
padded, long rows keep their extra cells); blank rows are dropped.
"""

from __future__ import annotations

import csv
import io
import re

from ingest.parsing.model import (
    DEFAULT_LIMITS,
    ROWS,
    ParsedDocument,
    ParseError,
    ParseLimits,
    Progress,
    TextBuilder,
)
from ingest.parsing.text import decode_text, normalise

_DELIMITERS = ",;\t|"
_SAMPLE_CHARS = 16 * 1024
_WHITESPACE = re.compile(r"\s+")


def sniff_delimiter(text: str) -> str:
    """The delimiter :class:`csv.Sniffer` finds in the first lines of ``text``, else ``,``."""
    sample = text[:_SAMPLE_CHARS]
    if len(text) > _SAMPLE_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _line(cells: list[str], delimiter: str) -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="").writerow(cells)
    return out.getvalue()


def parse_csv(
    data: bytes,
    content_type: str,
    filename: str,
    limits: ParseLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> ParsedDocument:
    """Header plus one section per data row."""
    text = normalise(decode_text(data, filename))
    if not text.strip():
        raise ParseError("empty", f"{filename} contains no rows")
    delimiter = sniff_delimiter(text)
    try:
        rows = [
            [_WHITESPACE.sub(" ", cell).strip() for cell in row]
            for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        ]
    except csv.Error as exc:
        raise ParseError("corrupt", f"{filename} is not valid CSV: {exc}") from exc
    rows = [row for row in rows if any(row)]
    if len(rows) < 2:
        raise ParseError("empty", f"{filename} has a header but no data rows")
    header = _line(rows[0], delimiter)
    builder = TextBuilder(separator="\n")
    builder.add_text(header)
    for row in rows[1:]:
        builder.add(_line(row, delimiter), kind=ROWS, header=header)
    return builder.build(content_type)
