"""Parsers on real files generated here: PDF (fpdf2, pypdf), DOCX (python-docx), CSV, Markdown,
plain text; and their failures (encrypted, corrupt, scanned, empty)."""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile

import docx
import pytest
from docx.oxml import OxmlElement
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from ingest.detect import CSV, DOCX, MARKDOWN, PDF, TEXT
from ingest.parsing import ParsedDocument, ParseError, ParseLimits, parse_document

PAGE_SENTENCES = (
    "Aardvarks dig burrows in the savanna at night.",
    "Barometers measure the pressure of the atmosphere.",
    "Cormorants dive deep to catch small fish.",
)


def make_pdf(pages: tuple[str, ...] = PAGE_SENTENCES) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def encrypt(data: bytes, user_password: str, owner_password: str = "owner") -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Field Guide", 0)
    document.add_paragraph("An introduction to the birds of the coast.")
    document.add_heading("Seabirds", 1)
    document.add_heading("Gulls", 2)
    document.add_paragraph("Gulls are loud and eat almost anything.")
    table = document.add_table(rows=3, cols=3)
    for row, values in zip(
        table.rows, (("Name", "Wingspan", "Diet"), ("Herring gull", "140 cm", "")), strict=False
    ):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    table.rows[2].cells[0].text = "Kittiwake"
    table.rows[2].cells[2].text = "fish"
    document.add_heading("Waders", 1)
    document.add_paragraph("Waders probe the mud with long bills.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def check_offsets(doc: ParsedDocument) -> None:
    for section in doc.sections:
        assert doc.text[section.char_start : section.char_end] == section.text
        assert section.text.strip() == section.text != ""


def test_pdf_keeps_page_numbers() -> None:
    doc = parse_document(make_pdf(), PDF, "animals.pdf")
    check_offsets(doc)
    assert doc.pages == 3
    assert [section.page for section in doc.sections] == [1, 2, 3]
    for section, sentence in zip(doc.sections, PAGE_SENTENCES, strict=True):
        assert section.text == sentence
        assert section.kind == "text"


def test_pdf_encrypted_with_user_password_is_refused() -> None:
    with pytest.raises(ParseError) as caught:
        parse_document(encrypt(make_pdf(), "secret"), PDF, "locked.pdf")
    assert caught.value.reason == "encrypted"
    assert "locked.pdf" in str(caught.value)


def test_pdf_encrypted_with_empty_user_password_opens() -> None:
    doc = parse_document(encrypt(make_pdf(), ""), PDF, "owner-only.pdf")
    assert [section.page for section in doc.sections] == [1, 2, 3]
    assert doc.sections[1].text == PAGE_SENTENCES[1]


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.95])
def test_pdf_truncated_is_corrupt(fraction: float) -> None:
    data = make_pdf()
    with pytest.raises(ParseError) as caught:
        parse_document(data[: int(len(data) * fraction)], PDF, "broken.pdf")
    assert caught.value.reason == "corrupt"


def test_pdf_damaged_page_is_skipped_and_the_others_kept() -> None:
    data = make_pdf()
    second = list(re.finditer(rb"stream\n(.*?)\nendstream", data, re.S))[1]
    damaged = data[: second.start(1)] + b"\xff" * len(second.group(1)) + data[second.end(1) :]
    doc = parse_document(damaged, PDF, "damaged.pdf")
    assert doc.pages == 3
    assert [(section.page, section.text) for section in doc.sections] == [
        (1, PAGE_SENTENCES[0]),
        (3, PAGE_SENTENCES[2]),
    ]


def test_pdf_with_only_images_has_no_text() -> None:
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60, style="F")
    with pytest.raises(ParseError) as caught:
        parse_document(bytes(pdf.output()), PDF, "scan.pdf")
    assert caught.value.reason == "no_text"
    assert "OCR" in str(caught.value)


def test_docx_headings_and_tables_in_order() -> None:
    doc = parse_document(make_docx(), DOCX, "guide.docx")
    check_offsets(doc)
    assert doc.pages is None
    by_text = {section.text: section for section in doc.sections}
    assert by_text["Field Guide"].heading_path == ("Field Guide",)
    assert by_text["An introduction to the birds of the coast."].heading_path == ("Field Guide",)
    gulls = by_text["Gulls are loud and eat almost anything."]
    assert gulls.heading_path == ("Field Guide", "Seabirds", "Gulls")
    [table] = [section for section in doc.sections if section.kind == "table"]
    assert table.text == "Name: Herring gull; Wingspan: 140 cm\nName: Kittiwake; Diet: fish"
    assert table.heading_path == ("Field Guide", "Seabirds", "Gulls")
    waders = by_text["Waders probe the mud with long bills."]
    assert waders.heading_path == ("Field Guide", "Waders")
    order = [section.text for section in doc.sections]
    assert order.index(gulls.text) < order.index(table.text) < order.index(waders.text)


def test_docx_merged_cells_count_once() -> None:
    document = docx.Document()
    table = document.add_table(rows=2, cols=3)
    table.rows[0].cells[0].text = "Item"
    table.rows[0].cells[1].text = "Notes"
    table.rows[0].cells[1].merge(table.rows[0].cells[2])
    table.rows[1].cells[0].text = "Tent"
    table.rows[1].cells[1].text = "Sleeps two"
    table.rows[1].cells[1].merge(table.rows[1].cells[2])
    out = io.BytesIO()
    document.save(out)
    doc = parse_document(out.getvalue(), DOCX, "kit.docx")
    assert doc.text == "Item: Tent; Notes: Sleeps two"


def test_docx_paragraphs_inside_content_controls_are_kept() -> None:
    document = docx.Document()
    document.add_paragraph("Before the control.")
    inside = document.add_paragraph("Inside a content control.")
    document.add_paragraph("After the control.")
    sdt, content = OxmlElement("w:sdt"), OxmlElement("w:sdtContent")
    inside._p.addprevious(sdt)
    sdt.append(content)
    content.append(inside._p)
    out = io.BytesIO()
    document.save(out)
    doc = parse_document(out.getvalue(), DOCX, "controls.docx")
    assert [section.text for section in doc.sections] == [
        "Before the control.",
        "Inside a content control.",
        "After the control.",
    ]


@pytest.mark.parametrize("data", [b"PK\x03\x04 not really a zip", make_docx()[:5000]])
def test_docx_corrupt(data: bytes) -> None:
    with pytest.raises(ParseError) as caught:
        parse_document(data, DOCX, "broken.docx")
    assert caught.value.reason == "corrupt"


def test_docx_zip_bomb_is_refused_before_unpacking() -> None:
    out = io.BytesIO(make_docx())
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/media/padding.bin", bytes(24 * 2**20))
    with pytest.raises(ParseError) as caught:
        parse_document(out.getvalue(), DOCX, "bomb.docx")
    assert caught.value.reason == "too_large"
    assert "expands to" in str(caught.value)


def test_docx_zip_bomb_behind_a_stored_random_part_is_refused() -> None:
    """A large stored (uncompressed) random part used to raise the allowance of the whole file,
    letting a highly compressed document.xml through: the ratio now holds per compressed part."""
    out = io.BytesIO(make_docx())
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr("word/media/noise.bin", os.urandom(640 * 1024), zipfile.ZIP_STORED)
        archive.writestr("word/media/bomb.xml", b"<a/>" * (16 * 2**20), zipfile.ZIP_DEFLATED)
    assert len(out.getvalue()) < 1024 * 1024  # 64 MiB unpacked hides in a sub-MiB file
    with pytest.raises(ParseError) as caught:
        parse_document(out.getvalue(), DOCX, "padded.docx")
    assert caught.value.reason == "too_large"


def test_docx_with_a_large_stored_part_is_accepted() -> None:
    out = io.BytesIO(make_docx())
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr("word/media/photo.jpg", os.urandom(6 * 2**20), zipfile.ZIP_STORED)
    doc = parse_document(out.getvalue(), DOCX, "photo.docx")
    assert doc.sections


def test_pdf_over_the_page_cap_is_refused_before_reading_pages() -> None:
    with pytest.raises(ParseError) as caught:
        parse_document(make_pdf(), PDF, "long.pdf", ParseLimits(max_pages=2))
    assert caught.value.reason == "too_many_pages"
    assert "3 pages" in str(caught.value)
    assert parse_document(make_pdf(), PDF, "long.pdf", ParseLimits(max_pages=3)).pages == 3


def test_csv_semicolons_latin1_header_on_every_row() -> None:
    text = (
        "Nom;Ville;Âge\n"
        "Hélène Dupré;Besançon;34\n"
        "Jérôme Lefèvre;Orléans;51\n"
        "\n"
        "François Müller;Genève;28\n"
    )
    doc = parse_document(text.encode("latin-1"), CSV, "personnes.csv")
    check_offsets(doc)
    rows = [section for section in doc.sections]
    assert [row.kind for row in rows] == ["rows"] * 3
    assert {row.header for row in rows} == {"Nom;Ville;Âge"}
    assert rows[0].text == "Hélène Dupré;Besançon;34"
    assert rows[2].text == "François Müller;Genève;28"
    assert doc.text.startswith("Nom;Ville;Âge\n")


def test_csv_ragged_rows_and_quoted_newlines() -> None:
    text = 'id,name,notes\n1,alpha\n2,beta,"two\nlines",extra\n3,"gamma, delta",ok\n'
    doc = parse_document(text.encode(), CSV, "ragged.csv")
    check_offsets(doc)
    assert [row.text for row in doc.sections] == [
        "1,alpha",
        "2,beta,two lines,extra",
        '3,"gamma, delta",ok',
    ]


def test_csv_without_rows_is_empty() -> None:
    with pytest.raises(ParseError) as caught:
        parse_document(b"a,b,c\n\n", CSV, "header.csv")
    assert caught.value.reason == "empty"


def test_markdown_nested_headings() -> None:
    text = (
        "# Manual\n\nIntro text.\n\n## Install\n\nRun the installer.\n\n"
        "```sh\n# a comment, not a heading\nmake\n```\n\n### Linux\n\nUse the package.\n\n"
        "## Usage ##\n\nCall it.\n\n# Appendix\n\nMore.\n"
    )
    doc = parse_document(text.encode(), MARKDOWN, "manual.md")
    check_offsets(doc)
    paths = {section.text: section.heading_path for section in doc.sections}
    assert paths["Intro text."] == ("Manual",)
    assert paths["Run the installer."] == ("Manual", "Install")
    assert paths["```sh\n# a comment, not a heading\nmake\n```"] == ("Manual", "Install")
    assert paths["Use the package."] == ("Manual", "Install", "Linux")
    assert paths["## Usage ##"] == ("Manual", "Usage")
    assert paths["Call it."] == ("Manual", "Usage")
    assert paths["More."] == ("Appendix",)


def test_markdown_setext_headings_and_front_matter() -> None:
    text = (
        "---\ntitle: x\n---\n\nGuide\n=====\n\nIntro.\n\nSetup\n-----\n\nSteps.\n"
        "Still steps\n---\n\nTail.\n"
    )
    doc = parse_document(text.encode(), MARKDOWN, "setext.md")
    check_offsets(doc)
    paths = {section.text: section.heading_path for section in doc.sections}
    assert paths["---\ntitle: x\n---"] == ()
    assert paths["Guide\n====="] == ("Guide",)
    assert paths["Intro."] == ("Guide",)
    assert paths["Setup\n-----"] == ("Guide", "Setup")
    assert paths["Steps.\nStill steps\n---"] == ("Guide", "Setup")
    assert paths["Tail."] == ("Guide", "Setup")


def test_plain_text_paragraphs_with_crlf_and_nuls() -> None:
    data = b"First para\r\nstill first.\r\n\r\n\r\nSecond\x00 para.\n  \n\tThird.  "
    doc = parse_document(data, TEXT, "notes.txt")
    check_offsets(doc)
    assert [section.text for section in doc.sections] == [
        "First para\nstill first.",
        "Second para.",
        "Third.",
    ]
    assert all(section.heading_path == () and section.page is None for section in doc.sections)


def test_unusual_line_breaks_become_newlines() -> None:
    text = "one\u2028two\x0bthree\x85four\u2029five\x0csix\rseven"
    doc = parse_document(text.encode(), TEXT, "breaks.txt")
    assert doc.text == "one\ntwo\nthree\nfour\n\nfive\n\nsix\nseven"
    assert [section.text for section in doc.sections] == [
        "one\ntwo\nthree\nfour",
        "five",
        "six\nseven",
    ]


def test_text_utf16_with_bom() -> None:
    doc = parse_document("Grüße aus Köln.".encode("utf-16"), TEXT, "gruss.txt")
    assert doc.text == "Grüße aus Köln."


@pytest.mark.parametrize("content_type", [TEXT, MARKDOWN, CSV])
@pytest.mark.parametrize("data", [b"", b" \n\t\n "])
def test_empty_text_like(content_type: str, data: bytes) -> None:
    with pytest.raises(ParseError) as caught:
        parse_document(data, content_type, "blank")
    assert caught.value.reason == "empty"


def test_parse_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ParseError("corrupt", "x.pdf is damaged")))
    assert (error.reason, str(error)) == ("corrupt", "x.pdf is damaged")


def test_parsed_document_is_picklable() -> None:
    doc = parse_document(make_docx(), DOCX, "guide.docx")
    assert pickle.loads(pickle.dumps(doc)) == doc


def test_unknown_content_type_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="image/png"):
        parse_document(b"\x89PNG", "image/png", "x.png")
