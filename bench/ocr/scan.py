"""Image-only PDFs made from text PDFs: each page rendered (pypdfium2) to a grayscale PNG at a
given resolution and placed as the whole page of a new PDF (fpdf2), so the result has no text
layer at all, like a clean scan."""

from __future__ import annotations

import io

import pypdfium2
from fpdf import FPDF


def image_only_pdf(pdf: bytes, dpi: int = 200, pages: list[int] | None = None) -> bytes:
    """``pdf`` with the pages numbered in ``pages`` (1-based; default all) replaced by images of
    themselves at ``dpi``; the other pages are copied as they are (with their text layer)."""
    from pypdf import PdfReader, PdfWriter

    source = pypdfium2.PdfDocument(pdf)
    reader = PdfReader(io.BytesIO(pdf))
    writer = PdfWriter()
    try:
        for index in range(len(source)):
            if pages is not None and index + 1 not in pages:
                writer.add_page(reader.pages[index])
                continue
            page = source[index]
            width, height = page.get_size()
            image = page.render(scale=dpi / 72, grayscale=True).to_pil()
            page.close()
            png = io.BytesIO()
            image.save(png, format="PNG")
            scan = FPDF(unit="pt")
            scan.add_page(format=(width, height))
            scan.image(png, x=0, y=0, w=width, h=height)
            writer.add_page(PdfReader(io.BytesIO(bytes(scan.output()))).pages[0])
    finally:
        source.close()
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
