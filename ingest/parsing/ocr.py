"""OCR of PDF pages that have no text layer: pypdfium2 renders the page, Tesseract reads it.

Both run offline from what is installed: pypdfium2's wheel carries PDFium, and Tesseract with its
English model comes from Debian (``tesseract-ocr``, ``tesseract-ocr-eng``; ``make setup``
installs them). Tesseract runs as a child of the parse process (killed with it, so the parse
deadline and memory limit hold for it too), one page at a time on one thread
(``OMP_THREAD_LIMIT=1``: parallelism comes from ``RAG_PARSE_PROCESSES``), the page passed on
stdin as a grayscale PGM at ``dpi`` dots per inch.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
from functools import cache

import pypdfium2

PAGE_TIMEOUT = 120.0
_PR_SET_PDEATHSIG = 1


class OcrUnavailable(Exception):
    """Tesseract (or its model for the language) is not installed."""


@cache
def tesseract() -> str | None:
    return shutil.which("tesseract")


def _die_with_parent() -> None:  # runs in the tesseract child before exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def render_pgm(document: pypdfium2.PdfDocument, index: int, dpi: int) -> bytes:
    """Page ``index`` (0-based) as a binary PGM image at ``dpi``."""
    page = document[index]
    try:
        bitmap = page.render(scale=dpi / 72, grayscale=True)
        pixels = bitmap.to_numpy()
    finally:
        page.close()
    if pixels.ndim == 3:  # some PDFium builds give one channel in a third axis
        pixels = pixels[:, :, 0]
    height, width = pixels.shape
    header = f"P5 {width} {height} 255\n".encode()
    return header + bytes(pixels.tobytes())


def recognise(image: bytes, language: str) -> str:
    """The text Tesseract reads in ``image`` (any format Leptonica reads)."""
    binary = tesseract()
    if binary is None:
        raise OcrUnavailable("tesseract is not installed (apt-get install tesseract-ocr)")
    done = subprocess.run(
        [binary, "stdin", "stdout", "-l", language, "--psm", "3"],
        input=image,
        capture_output=True,
        timeout=PAGE_TIMEOUT,
        preexec_fn=_die_with_parent,  # only prctl: safe before exec
        check=False,
        env={**os.environ, "OMP_THREAD_LIMIT": "1"},  # one core per parse process, as llama -t 1
    )
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise OcrUnavailable(f"tesseract failed: {message[-1] if message else done.returncode}")
    return done.stdout.decode("utf-8", errors="replace")


def open_pdf(data: bytes) -> pypdfium2.PdfDocument:
    return pypdfium2.PdfDocument(data)
