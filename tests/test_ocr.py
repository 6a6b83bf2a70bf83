"""OCR of PDF pages without a text layer (Tesseract from Debian, pypdfium2): only those pages are
recognised, their page numbers kept, the job's progress counts them, a setting turns it off."""

from __future__ import annotations

import pytest
from fpdf import FPDF

from bench.ocr.scan import image_only_pdf
from ingest.detect import PDF
from ingest.parsing import ParseError, ParseLimits, parse_document
from ingest.parsing.ocr import tesseract

pytestmark = pytest.mark.skipif(
    tesseract() is None,
    reason="Tesseract is not installed: `make setup` installs tesseract-ocr tesseract-ocr-eng",
)

PAGES = (
    "Aardvarks dig burrows in the savanna at night and sleep through the day.",
    "Barometers measure the pressure of the atmosphere above the harbour.",
    "Cormorants dive deep to catch small fish near the rocky coast.",
)


def text_pdf(pages: tuple[str, ...] = PAGES) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=14)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


def words(text: str) -> list[str]:
    return [word.strip(".,").lower() for word in text.split()]


def test_a_scanned_pdf_is_recognised_page_by_page() -> None:
    reports: list[tuple[str, int, int]] = []
    scan = image_only_pdf(text_pdf(), dpi=200)
    with pytest.raises(ParseError) as caught:
        parse_document(scan, PDF, "scan.pdf", ParseLimits(ocr=False))
    assert caught.value.reason == "no_text"  # no text layer at all: OCR is what reads it

    doc = parse_document(scan, PDF, "scan.pdf", progress=lambda *r: reports.append(r))
    assert doc.pages == 3
    assert [section.page for section in doc.sections] == [1, 2, 3]
    for section, expected in zip(doc.sections, PAGES, strict=True):
        assert words(section.text) == words(expected)
    assert reports == [("ocr", 1, 3), ("ocr", 2, 3), ("ocr", 3, 3)]


def test_only_the_image_page_among_text_pages_is_recognised() -> None:
    reports: list[tuple[str, int, int]] = []
    mixed = image_only_pdf(text_pdf(), dpi=200, pages=[2])
    doc = parse_document(mixed, PDF, "mixed.pdf", progress=lambda *r: reports.append(r))
    assert [section.page for section in doc.sections] == [1, 2, 3]
    assert doc.sections[0].text == PAGES[0]  # the text layer, exactly
    assert words(doc.sections[1].text) == words(PAGES[1])
    assert reports == [("ocr", 1, 1)]  # one page needed OCR, the others were not rendered

    off = parse_document(mixed, PDF, "mixed.pdf", ParseLimits(ocr=False))
    assert [section.page for section in off.sections] == [1, 3]


def test_a_blank_page_is_not_sent_to_ocr() -> None:
    reports: list[tuple[str, int, int]] = []
    pdf = FPDF()
    pdf.set_font("Helvetica", size=14)
    pdf.add_page()
    pdf.multi_cell(0, 10, PAGES[0])
    pdf.add_page()  # nothing drawn on it
    doc = parse_document(
        bytes(pdf.output()), PDF, "blank.pdf", progress=lambda *r: reports.append(r)
    )
    assert [section.page for section in doc.sections] == [1]
    assert reports == []
