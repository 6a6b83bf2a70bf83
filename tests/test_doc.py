"""Legacy Word 97-2003 (.doc): recognised from its bytes, parsed through LibreOffice like DOCX,
encrypted and damaged files failed with their reason. Real files from other projects' test suites
(tests/fixtures/doc/README.md), and a .doc that LibreOffice writes from a DOCX with headings and
a table."""

from __future__ import annotations

import io
import struct
import subprocess
import tempfile
from pathlib import Path

import olefile
import pytest

from ingest.detect import DOC, DOCX, DetectionError, detect_content_type
from ingest.parsing import ParseError, parse_document
from ingest.parsing.doc import soffice
from tests.test_parsing import make_docx

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "doc"
REAL = {
    "olefile-test-ole-file.doc": "Test OLE file, saved as Word 97-2003 Document.",
    "filetype-sample_1.doc": "yet another test sample for doc type",
}

needs_soffice = pytest.mark.skipif(
    soffice() is None,
    reason="LibreOffice (soffice) is not installed: `make setup` installs "
    "libreoffice-writer-nogui with apt-get",
)


def doc_from_docx(docx: bytes) -> bytes:
    """The Word 97-2003 file LibreOffice writes for ``docx``."""
    binary = soffice()
    assert binary is not None
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "source.docx"
        source.write_bytes(docx)
        subprocess.run(
            [binary, "--headless", f"-env:UserInstallation={Path(folder, 'p').as_uri()}",
             "--convert-to", "doc:MS Word 97", "--outdir", folder, str(source)],
            check=True, capture_output=True, timeout=240,
        )  # fmt: skip
        return (Path(folder) / "source.doc").read_bytes()


def with_flag(data: bytes, flag: int) -> bytes:
    """``data`` with ``flag`` set in the FIB flags of its WordDocument stream (in place)."""
    with olefile.OleFileIO(io.BytesIO(data)) as ole:
        fib = ole.openstream("WordDocument").read()
    flags = struct.unpack_from("<H", fib, 10)[0] | flag
    start = data.index(fib[:32])  # the stream's first sector, where the FIB is
    return data[: start + 10] + struct.pack("<H", flags) + data[start + 12 :]


@pytest.mark.parametrize("name", [*REAL, "puremagic-test.doc"])
def test_real_doc_files_are_recognised_by_content(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    assert detect_content_type(data, name) == DOC
    assert detect_content_type(data, "no-extension") == DOC
    assert detect_content_type(data[:65537], "upload.doc", path=FIXTURES / name) == DOC
    with pytest.raises(DetectionError) as caught:
        detect_content_type(data, "report.pdf")
    assert caught.value.reason == "mislabelled"


def test_other_ole_files_and_encrypted_packages_are_refused() -> None:
    data = (FIXTURES / "olefile-test-ole-file.doc").read_bytes()
    renamed = data.replace("WordDocument".encode("utf-16-le"), "WorkbookDoc!".encode("utf-16-le"))
    with pytest.raises(DetectionError) as caught:
        detect_content_type(renamed, "sheet.xls")
    assert caught.value.reason == "unsupported_type"


def test_an_encrypted_office_package_is_refused_at_upload() -> None:
    """Office 2007+ files with a password are OLE files holding an ``EncryptedPackage`` stream:
    here the real .doc's WordDocument directory entry renamed so (name and its length)."""
    data = bytearray((FIXTURES / "olefile-test-ole-file.doc").read_bytes())
    at = data.index("WordDocument".encode("utf-16-le") + b"\x00\x00")
    name = "EncryptedPackage".encode("utf-16-le") + b"\x00\x00"
    data[at : at + len(name)] = name
    struct.pack_into("<H", data, at + 64, len(name))  # the entry's name length, in bytes
    with pytest.raises(DetectionError) as caught:
        detect_content_type(bytes(data), "secret.docx")
    assert caught.value.reason == "encrypted"
    assert "password-protected" in str(caught.value)


@needs_soffice
@pytest.mark.parametrize(("name", "text"), REAL.items())
def test_real_doc_files_are_parsed(name: str, text: str) -> None:
    doc = parse_document((FIXTURES / name).read_bytes(), DOC, name)
    assert doc.content_type == DOC
    assert [section.text for section in doc.sections] == [text]


@needs_soffice
def test_a_doc_without_text_is_empty() -> None:
    with pytest.raises(ParseError) as caught:
        parse_document((FIXTURES / "puremagic-test.doc").read_bytes(), DOC, "blank.doc")
    assert caught.value.reason == "empty"


@needs_soffice
def test_headings_and_tables_come_through_as_in_docx() -> None:
    source = make_docx()
    data = doc_from_docx(source)
    assert detect_content_type(data, "guide.doc") == DOC
    as_doc = parse_document(data, DOC, "guide.doc")
    as_docx = parse_document(source, DOCX, "guide.docx")
    assert [(s.kind, s.heading_path, s.text) for s in as_doc.sections] == [
        (s.kind, s.heading_path, s.text) for s in as_docx.sections
    ]


def test_encrypted_doc_fails_with_its_reason() -> None:
    data = (FIXTURES / "olefile-test-ole-file.doc").read_bytes()
    with pytest.raises(ParseError) as caught:
        parse_document(with_flag(data, 0x0100), DOC, "locked.doc")  # FIB fEncrypted
    assert caught.value.reason == "encrypted"
    assert "password" in str(caught.value)


@pytest.mark.parametrize("cut", [512, 2048, 8192])
def test_truncated_doc_is_corrupt(cut: int) -> None:
    data = (FIXTURES / "olefile-test-ole-file.doc").read_bytes()[:cut]
    with pytest.raises(ParseError) as caught:
        parse_document(data, DOC, "cut.doc")
    assert caught.value.reason == "corrupt"
