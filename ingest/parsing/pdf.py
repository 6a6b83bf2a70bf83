"""PDF parsing with pypdf: one section per page that has text, page numbers kept (1-based).

A page without a text layer that draws an image (a scan, or one scanned page among text pages)
is rendered and recognised by OCR (:mod:`ingest.parsing.ocr`) unless ``limits.ocr`` is off; only
those pages are, and each one recognised is reported as ``progress("ocr", done, total)``.

Failures are translated here into :class:`ParseError`: a file pypdf cannot read is ``"corrupt"``;
an encrypted file that does not open with the empty password is ``"encrypted"``; a PDF whose
pages give no text at all (a scan, images only) is ``"no_text"``; one with more pages than
``limits.max_pages`` is ``"too_many_pages"`` (before any page is read). A single damaged page is
skipped; only when no page can be read is the file ``"corrupt"``.

Page text is normalised: NULs and control characters removed, runs of spaces and tabs collapsed,
trailing spaces on lines removed and runs of blank lines reduced to one.
"""

from __future__ import annotations

import io
import logging
import re
import zlib

from pypdf import PageObject, PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError

from ingest.parsing import ocr
from ingest.parsing.model import (
    DEFAULT_LIMITS,
    ParsedDocument,
    ParseError,
    ParseLimits,
    Progress,
    TextBuilder,
)
from ingest.parsing.text import normalise

log = logging.getLogger(__name__)

_SPACES = re.compile(r"[ \t\u00a0]+")
_LINE_END_SPACE = re.compile(r" +\n")
_MANY_BLANK_LINES = re.compile(r"\n\s*\n\s*")

# pypdf raises many kinds of exceptions on damaged files, not only its own.
_READ_ERRORS = (
    PyPdfError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OSError,
    RecursionError,
    zlib.error,
)


def _clean(text: str) -> str:
    text = _SPACES.sub(" ", normalise(text))
    text = _LINE_END_SPACE.sub("\n", text)
    return _MANY_BLANK_LINES.sub("\n\n", text).strip()


def _open(data: bytes, filename: str) -> PdfReader:
    try:
        reader = PdfReader(io.BytesIO(data))
    except DependencyError as exc:
        raise ParseError(
            "encrypted", f"{filename} is encrypted with a method not supported here"
        ) from exc
    except _READ_ERRORS as exc:
        raise ParseError(
            "corrupt", f"{filename} is not a readable PDF (damaged or truncated)"
        ) from exc
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")
        except DependencyError as exc:
            raise ParseError(
                "encrypted", f"{filename} is encrypted with a method not supported here"
            ) from exc
        except _READ_ERRORS as exc:
            raise ParseError("corrupt", f"{filename} has a damaged encryption dictionary") from exc
        if not opened:
            raise ParseError(
                "encrypted", f"{filename} is password-protected; upload it unencrypted"
            )
    return reader


def _page_count(reader: PdfReader, filename: str) -> int:
    try:
        return len(reader.pages)
    except FileNotDecryptedError as exc:
        raise ParseError("encrypted", f"{filename} is password-protected") from exc
    except _READ_ERRORS as exc:
        raise ParseError("corrupt", f"{filename} has a damaged page tree") from exc


def _has_images(page: PageObject) -> bool:
    """Whether the page draws an image (an image or form XObject, or an inline image)."""
    try:
        resources = page.get("/Resources")
        xobjects = resources.get_object().get("/XObject") if resources is not None else None
        if xobjects:
            for reference in xobjects.get_object().values():
                if reference.get_object().get("/Subtype") in ("/Image", "/Form"):
                    return True
        contents = page.get_contents()
        return contents is not None and b"BI" in contents.get_data()
    except _READ_ERRORS:
        return True  # cannot tell: let OCR look


def _recognise(
    data: bytes, numbers: list[int], limits: ParseLimits, progress: Progress | None, name: str
) -> dict[int, str]:
    """OCR of pages ``numbers`` (1-based); ``{}`` where OCR is not installed."""
    texts: dict[int, str] = {}
    try:
        document = ocr.open_pdf(data)
    except Exception as exc:  # PDFium refuses what pypdf read: no OCR, the text pages stay
        log.warning("%s: cannot render pages for OCR: %s", name, exc)
        return texts
    try:
        for done, number in enumerate(numbers, start=1):
            image = ocr.render_pgm(document, number - 1, limits.ocr_dpi)
            texts[number] = _clean(ocr.recognise(image, limits.ocr_language))
            if progress is not None:
                progress("ocr", done, len(numbers))
    except ocr.OcrUnavailable as exc:
        log.warning("%s: %d page(s) without text left out: %s", name, len(numbers), exc)
    finally:
        document.close()
    return texts


def parse_pdf(
    data: bytes,
    content_type: str,
    filename: str,
    limits: ParseLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> ParsedDocument:
    """Extract the text of every page, in order; OCR the pages that have none but draw images.

    A page whose text cannot be extracted is skipped (and logged) as long as another page can
    be read: one damaged content stream should not lose a whole book.
    """
    reader = _open(data, filename)
    page_count = _page_count(reader, filename)
    if page_count == 0:
        raise ParseError("empty", f"{filename} has no pages")
    if page_count > limits.max_pages:
        raise ParseError(
            "too_many_pages",
            f"{filename} has {page_count} pages, more than the limit of {limits.max_pages} "
            "(RAG_PARSE_MAX_PAGES); split it or raise the limit",
        )
    texts: dict[int, str] = {}
    failed: list[int] = []
    scanned: list[int] = []
    for number in range(1, page_count + 1):
        page = reader.pages[number - 1]
        try:
            text = _clean(page.extract_text())
        except _READ_ERRORS as exc:
            log.warning("%s: page %d skipped: %s", filename, number, exc)
            failed.append(number)
            continue
        if text:
            texts[number] = text
        elif limits.ocr and _has_images(page):
            scanned.append(number)
    if len(failed) == page_count:
        raise ParseError("corrupt", f"{filename} is not a readable PDF (no page could be read)")
    if scanned:
        texts.update(_recognise(data, scanned, limits, progress, filename))
    builder = TextBuilder()
    for number in sorted(texts):
        builder.add(texts[number], page=number)
    if not builder.sections:
        hint = "run OCR on it first" if not limits.ocr else "OCR found no text on its pages"
        if limits.ocr and scanned and ocr.tesseract() is None:
            hint = "OCR is not installed here (apt-get install tesseract-ocr tesseract-ocr-eng)"
        raise ParseError(
            "no_text",
            f"{filename} has no extractable text (is it scanned or made of images?); {hint}",
        )
    return builder.build(content_type, pages=page_count)
