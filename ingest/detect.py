"""Content-type detection of uploads from their bytes, with the file name as a tie-breaker.

:func:`detect_content_type` decides from the content first: ``%PDF-`` in the first KiB is a PDF;
a ZIP archive holding ``word/document.xml`` is a DOCX; an OLE compound file (the container of
Office 97-2003 files) with a ``WordDocument`` stream is a legacy Word ``.doc``, one with an
``EncryptedPackage`` stream a password-protected Office 2007+ file (``"encrypted"``); bytes
that decode as text (no NULs outside a UTF-16/32 byte-order mark, an encoding charset-normalizer
recognises) are text. Among text, the name chooses CSV (``.csv``/``.tsv``) or Markdown
(``.md``/``.markdown``), otherwise plain text; the declared type counts only when the name has no
known extension.

The name never overrules the content: a file named ``.pdf``/``.docx`` (or declared so) whose
content is something else is ``"mislabelled"``; known binary formats (images, archives,
executables) and unrecognised bytes are ``"unsupported_type"``; no bytes, or only whitespace, is
``"empty"``; an encrypted Office 2007+ file is ``"encrypted"``. A file whose content is a
supported type under another name (a PDF named ``.txt``) is accepted as what its content is.

Pass the whole file when you have it: PDFs and text are recognised from the first 64 KiB, but a
DOCX is only certain from the ZIP's central directory at the end (and a DOC from the OLE
directory, wherever it is): pass ``path`` too when the whole file is on disk. Given only a head, a
ZIP is recognised as DOCX when a ``word/document.xml`` entry appears among its first local
headers, and an OLE file as DOC when its head names a ``WordDocument`` stream.
"""

from __future__ import annotations

import codecs
import io
import zipfile
from pathlib import Path, PurePath

import olefile
from charset_normalizer import from_bytes

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
DOC = "application/msword"
CSV = "text/csv"
MARKDOWN = "text/markdown"
TEXT = "text/plain"

SUPPORTED = (PDF, DOCX, DOC, CSV, MARKDOWN, TEXT)
SAMPLE_BYTES = 64 * 1024

_NAMES = {
    PDF: "PDF",
    DOCX: "DOCX",
    DOC: "Word 97-2003 (.doc)",
    CSV: "CSV",
    MARKDOWN: "Markdown",
    TEXT: "plain text",
}
_BY_EXTENSION = {
    ".pdf": PDF,
    ".docx": DOCX,
    ".doc": DOC,
    ".csv": CSV,
    ".tsv": CSV,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".txt": TEXT,
    ".text": TEXT,
}
_DECLARED_ALIASES = {"application/x-pdf": PDF, "text/x-markdown": MARKDOWN}
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"RIFF", "a RIFF (WebP/WAV/AVI) file"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x7fELF", "an ELF executable"),
    (b"MZ", "a Windows executable"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"ID3", "an MP3 file"),
)
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_TEXT_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class DetectionError(Exception):
    """The upload is not a supported document.

    ``reason`` is ``"unsupported_type"``, ``"mislabelled"`` or ``"empty"``; ``str(error)`` is a
    readable message for a person. Picklable.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[DetectionError], tuple[str, str]]:
        return (type(self), (self.reason, self.message))


def _zip_kind(data: bytes, path: Path | None = None) -> str | None:
    """``DOCX`` for a Word document, ``None`` for any other ZIP archive (read from ``path``, the
    whole file, when given)."""
    try:
        with zipfile.ZipFile(path if path is not None else io.BytesIO(data)) as archive:
            return DOCX if "word/document.xml" in archive.namelist() else None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        # Only a head, or a damaged archive: look at the local file headers we have.
        return DOCX if b"word/document.xml" in data[:SAMPLE_BYTES] else None


def _ole_kind(data: bytes, path: Path | None) -> tuple[str | None, str]:
    """What an OLE compound file holds: a Word document, an encrypted package, or other."""
    try:
        with olefile.OleFileIO(str(path) if path is not None else io.BytesIO(data)) as ole:
            if ole.exists("WordDocument"):
                return DOC, "a Word 97-2003 document"
            if ole.exists("EncryptedPackage"):
                raise DetectionError(
                    "encrypted", "a password-protected Office document; upload it unencrypted"
                )
            if ole.exists("Workbook") or ole.exists("Book"):
                return None, "an Excel 97-2003 workbook"
            if ole.exists("PowerPoint Document"):
                return None, "a PowerPoint 97-2003 presentation"
    except (OSError, ValueError, IndexError, KeyError):
        if path is None and b"W\x00o\x00r\x00d\x00D\x00o\x00c\x00" in data[:SAMPLE_BYTES]:
            return DOC, "a Word 97-2003 document"  # only a head: its directory names a Word stream
        return None, "a damaged OLE compound file"
    return None, "a legacy Office file that is not a Word document"


def _is_text(sample: bytes, complete: bool) -> bool:
    if sample.startswith(_TEXT_BOMS) or sample.startswith(codecs.BOM_UTF8):
        return True
    if b"\x00" in sample:
        return False
    if not complete:  # do not let a multibyte character cut at the end decide
        cut = max(sample.rfind(b"\n"), sample.rfind(b" "))
        sample = sample[:cut] if cut > len(sample) // 2 else sample
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError:
        pass
    best = from_bytes(sample).best()
    return best is not None and best.encoding is not None


def _sniff(data: bytes, path: Path | None = None) -> tuple[str | None, str]:
    """``(content type or None, description of the content for messages)``."""
    if b"%PDF-" in data[:1024]:
        return PDF, "a PDF document"
    if data.startswith(b"PK\x03\x04"):
        kind = _zip_kind(data, path)
        return kind, "a DOCX document" if kind else "a ZIP archive (not a DOCX document)"
    if data.startswith(OLE_MAGIC):
        return _ole_kind(data, path)
    if data.startswith(b"{\\rtf"):
        return None, "an RTF document"
    # Text first: some signatures ("MZ", "ID3") are also how a text file may begin.
    if _is_text(data[:SAMPLE_BYTES], complete=len(data) <= SAMPLE_BYTES):
        return TEXT, "plain text"
    for magic, description in _MAGIC:
        if data.startswith(magic):
            return None, description
    return None, "binary data of an unknown kind"


def _declared_type(declared: str | None) -> str | None:
    if not declared:
        return None
    value = declared.split(";")[0].strip().lower()
    value = _DECLARED_ALIASES.get(value, value)
    return value if value in SUPPORTED else None


def detect_content_type(
    data: bytes, filename: str, declared: str | None = None, *, path: Path | None = None
) -> str:
    """The content type of an upload: one of :data:`SUPPORTED`, or a :class:`DetectionError`.

    ``data`` is the whole file, or at least its first :data:`SAMPLE_BYTES` (see the module
    docstring for what a head alone cannot tell); ``declared`` is the client's Content-Type.
    ``path``, when given, is where the whole file is: a ZIP is then judged by its central
    directory, read from there, and nothing else is read beyond ``data``.
    """
    if not data[:SAMPLE_BYTES].strip() and not data.strip():
        raise DetectionError("empty", f"{filename} is empty")
    by_name = _BY_EXTENSION.get(PurePath(filename).suffix.lower())
    by_declared = _declared_type(declared)
    claimed, how = (by_name, "named") if by_name else (by_declared, "declared")
    try:
        sniffed, description = _sniff(data, path)
    except DetectionError as exc:
        raise DetectionError(exc.reason, f"{filename} is {exc.message}") from None
    if claimed in (PDF, DOCX, DOC) and sniffed != claimed:
        raise DetectionError(
            "mislabelled",
            f"{filename} is {how} as {_NAMES[claimed]} but its content is {description}",
        )
    if sniffed is None:
        raise DetectionError(
            "unsupported_type",
            f"{filename} is {description}; "
            "supported are PDF, DOCX, DOC, CSV, Markdown and plain text",
        )
    if sniffed != TEXT:
        return sniffed
    return claimed if claimed in (CSV, MARKDOWN) else TEXT
