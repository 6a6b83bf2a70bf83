"""Legacy Word 97-2003 ``.doc`` parsing: LibreOffice converts it to DOCX, which is then parsed by
:func:`ingest.parsing.docx.parse_docx`, so a ``.doc`` has the same paragraphs, headings, tables and
metadata as the DOCX it would be saved as (docs/dependencies.md says why LibreOffice).

Before converting, the OLE compound file is checked with olefile: a file olefile cannot read, or
one without a ``WordDocument`` stream or a Word FIB at its start, is ``"corrupt"``; a FIB with
``fEncrypted`` (password to open) is ``"encrypted"``. LibreOffice runs headless as a child of the
parse process, with its own profile folder per parse process, killed if the parse process dies
(so the parse deadline and memory limit hold for it too) and bounded by :data:`CONVERT_TIMEOUT`.
No ``soffice`` on the machine is ``"converter_missing"``, with how to install it.
"""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import signal
import struct
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import olefile

from ingest.detect import DOCX
from ingest.parsing.docx import parse_docx
from ingest.parsing.model import DEFAULT_LIMITS, ParsedDocument, ParseError, ParseLimits, Progress

CONVERT_TIMEOUT = 240.0
WORD_IDENT = 0xA5EC
F_ENCRYPTED = 0x0100
_PR_SET_PDEATHSIG = 1


def soffice() -> str | None:
    """The LibreOffice binary, if installed."""
    return shutil.which("soffice") or shutil.which("libreoffice")


PROFILES = Path(tempfile.gettempdir()) / "rag-soffice"


@cache
def _profile() -> Path:
    """This process's LibreOffice profile (two processes must not share one), in a folder named
    by its pid; those of processes that are gone (killed parse processes) are removed here."""
    PROFILES.mkdir(exist_ok=True)
    for folder in PROFILES.iterdir():
        if folder.name.isdigit() and not Path(f"/proc/{folder.name}").exists():
            shutil.rmtree(folder, ignore_errors=True)
    own = PROFILES / str(os.getpid())
    shutil.rmtree(own, ignore_errors=True)  # a recycled pid's leftovers
    own.mkdir()
    return own


def check_word_file(data: bytes, filename: str) -> None:
    """Raise ``ParseError`` unless ``data`` is a readable, unencrypted Word 97-2003 file."""
    try:
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            if not ole.exists("WordDocument"):
                raise ParseError("corrupt", f"{filename} is an OLE file without a Word document")
            fib = ole.openstream("WordDocument").read(12)
    except ParseError:
        raise
    except (OSError, ValueError, struct.error, IndexError, KeyError) as exc:
        raise ParseError("corrupt", f"{filename} is not a readable Word document") from exc
    if len(fib) < 12 or struct.unpack_from("<H", fib, 0)[0] != WORD_IDENT:
        raise ParseError("corrupt", f"{filename} has no Word file information block")
    if struct.unpack_from("<H", fib, 10)[0] & F_ENCRYPTED:
        raise ParseError("encrypted", f"{filename} is password-protected; upload it unencrypted")


def _die_with_parent() -> None:  # runs in the LibreOffice child before exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def convert_to_docx(data: bytes, filename: str) -> bytes:
    """The DOCX LibreOffice writes for ``data``."""
    binary = soffice()
    if binary is None:
        raise ParseError(
            "converter_missing",
            f"{filename} is a legacy Word document, which needs LibreOffice on the ingestion "
            "machine (Debian: apt-get install libreoffice-writer-nogui; `make setup` does it)",
        )
    with tempfile.TemporaryDirectory(prefix="rag-doc-") as folder:
        source = Path(folder) / "document.doc"
        source.write_bytes(data)
        command = [
            binary, "--headless", "--norestore", "--nolockcheck",
            f"-env:UserInstallation={_profile().as_uri()}",
            "--convert-to", "docx:MS Word 2007 XML", "--outdir", folder, str(source),
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                timeout=CONVERT_TIMEOUT,
                preexec_fn=_die_with_parent,  # only prctl: safe before exec
                check=False,
                env={**os.environ, "HOME": str(_profile())},
            )
        except subprocess.TimeoutExpired as exc:
            raise ParseError(
                "timeout", f"converting {filename} took longer than {CONVERT_TIMEOUT:g} s"
            ) from exc
        target = Path(folder) / "document.docx"
        if done.returncode != 0 or not target.is_file():
            raise ParseError("corrupt", f"{filename} could not be converted (damaged document?)")
        return target.read_bytes()


def parse_doc(
    data: bytes,
    content_type: str,
    filename: str,
    limits: ParseLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> ParsedDocument:
    """Paragraphs and tables in body order, with heading paths, as for DOCX."""
    check_word_file(data, filename)
    converted = parse_docx(convert_to_docx(data, filename), DOCX, filename, limits, progress)
    return ParsedDocument(converted.text, converted.sections, converted.pages, content_type)
