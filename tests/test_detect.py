"""Content-type detection from real bytes: each supported type, mislabelled, unsupported, empty."""

from __future__ import annotations

import io
import pickle
import random
import zipfile

import docx
import pytest
from fpdf import FPDF

from ingest.detect import (
    CSV,
    DOCX,
    MARKDOWN,
    PDF,
    SAMPLE_BYTES,
    TEXT,
    DetectionError,
    detect_content_type,
)

# The first bytes of a real 1x1 PNG.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")


def pdf_bytes() -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.cell(text="Hello from a PDF.")
    return bytes(pdf.output())


def docx_bytes(paragraphs: int = 1) -> bytes:
    document = docx.Document()
    for number in range(paragraphs):
        document.add_paragraph(f"Paragraph {number} of a Word document.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "not a word document")
    return out.getvalue()


def reason(data: bytes, filename: str, declared: str | None = None) -> str:
    with pytest.raises(DetectionError) as caught:
        detect_content_type(data, filename, declared)
    return caught.value.reason


@pytest.mark.parametrize(
    ("data", "filename", "expected"),
    [
        (pdf_bytes(), "report.pdf", PDF),
        (docx_bytes(), "letter.docx", DOCX),
        (b"a;b\n1;2\n", "table.csv", CSV),
        (b"a\tb\n1\t2\n", "table.tsv", CSV),
        (b"# Title\n\nBody.\n", "README.md", MARKDOWN),
        (b"# Title\n\nBody.\n", "notes.markdown", MARKDOWN),
        (b"Just some words.\n", "notes.txt", TEXT),
        (b"Just some words.\n", "no-extension", TEXT),
        (b"print('hello')\n", "script.py", TEXT),
        ("Café crème, s'il vous plaît.".encode("latin-1"), "menu.txt", TEXT),
        ("Grüße".encode("utf-16"), "utf16.txt", TEXT),
        (pdf_bytes(), "actually-a-pdf.txt", PDF),
        (b"MZ Holdings annual report\n", "report.txt", TEXT),
    ],
)
def test_detects_supported_types(data: bytes, filename: str, expected: str) -> None:
    assert detect_content_type(data, filename) == expected


def test_declared_type_decides_text_kind_only_without_a_known_extension() -> None:
    assert detect_content_type(b"# T\n", "upload", "text/markdown; charset=utf-8") == MARKDOWN
    assert detect_content_type(b"a,b\n1,2\n", "upload", "text/csv") == CSV
    assert detect_content_type(b"a,b\n1,2\n", "upload.txt", "text/csv") == TEXT
    assert detect_content_type(b"plain", "upload", "application/octet-stream") == TEXT


def test_docx_recognised_from_a_head_only() -> None:
    data = docx_bytes()
    assert detect_content_type(data[:4096], "letter.docx") == DOCX


def test_large_text_is_sampled() -> None:
    data = ("Ünïcödé text line.\n" * (SAMPLE_BYTES // 10)).encode()
    assert len(data) > SAMPLE_BYTES
    assert detect_content_type(data, "big.txt") == TEXT


def test_pdf_name_with_text_content_is_mislabelled() -> None:
    with pytest.raises(DetectionError) as caught:
        detect_content_type(b"Hello, I am plain text.\n", "file.pdf")
    assert caught.value.reason == "mislabelled"
    assert str(caught.value) == "file.pdf is named as PDF but its content is plain text"


@pytest.mark.parametrize(
    ("data", "filename", "declared"),
    [
        (pdf_bytes(), "letter.docx", None),
        (zip_bytes(), "letter.docx", None),
        (PNG, "scan.pdf", None),
        (b"plain text", "upload", "application/pdf"),
    ],
)
def test_mislabelled(data: bytes, filename: str, declared: str | None) -> None:
    assert reason(data, filename, declared) == "mislabelled"


@pytest.mark.parametrize(
    ("data", "filename", "fragment"),
    [
        (PNG, "image.png", "a PNG image"),
        (PNG, "image.txt", "a PNG image"),
        (b"\x7fELF\x02\x01\x01" + bytes(64), "tool", "an ELF executable"),
        (zip_bytes(), "bundle.zip", "a ZIP archive"),
        (random.Random(7).randbytes(4096), "noise.bin", "binary data of an unknown kind"),
        (b"text with a NUL\x00 byte", "odd.txt", "binary data"),
        (b"{\\rtf1\\ansi Hello}", "letter.rtf", "an RTF document"),
        (b"MZ\x90\x00\x03\x00\x00\x00", "setup.exe", "a Windows executable"),
    ],
)
def test_unsupported(data: bytes, filename: str, fragment: str) -> None:
    with pytest.raises(DetectionError) as caught:
        detect_content_type(data, filename)
    assert caught.value.reason == "unsupported_type"
    assert fragment in str(caught.value)
    assert filename in str(caught.value)


@pytest.mark.parametrize("data", [b"", b"  \n\t\r\n"])
def test_empty(data: bytes) -> None:
    assert reason(data, "empty.pdf") == "empty"


def test_detection_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(DetectionError("empty", "x is empty")))
    assert (error.reason, str(error)) == ("empty", "x is empty")
