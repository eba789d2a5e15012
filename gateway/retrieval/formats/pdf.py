"""PDF via pypdfium2 (PDFium): text layer with font sizes for headings, OCR for scanned pages."""

from __future__ import annotations

import itertools
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from .blocks import Block, Document, Heading, Paragraph, ParseError
from .dates import to_iso_date
from .ocr import ocr_image
from .textutil import squash

if TYPE_CHECKING:
    from PIL.Image import Image

MAX_OCR_PAGES = 50  # scanned pages cost ~1-3 s each; beyond this we warn and stop
_MIN_TEXT_CHARS = 20  # a page with less text than this and an image on it counts as scanned
_OCR_LONG_SIDE_PX = 2000  # render scanned pages at about 180-240 dpi for A4/Letter
_PAGE_NUMBER = re.compile(r"^(page\s+)?\d{1,4}(\s*(/|of)\s*\d{1,4})?$", re.IGNORECASE)


@dataclass(slots=True)
class _Line:
    text: str
    size: float  # font size of most of its characters
    baseline: float  # y of the first character's bottom, in PDF units (grows upwards)
    page: int


def parse_pdf(data: bytes, max_ocr_pages: int = MAX_OCR_PAGES) -> Document:
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise ParseError("encrypted PDF (password required)") from exc
        raise ParseError(f"corrupt PDF: {exc}") from exc
    try:
        return _parse(pdf, max_ocr_pages)
    finally:
        pdf.close()


def _parse(pdf: pdfium.PdfDocument, max_ocr_pages: int) -> Document:
    meta = pdf.get_metadata_dict(skip_empty=True)
    doc = Document(
        title=squash(meta.get("Title", "")),
        date=to_iso_date(meta.get("ModDate")) or to_iso_date(meta.get("CreationDate")),
    )
    text_lines: list[_Line] = []
    ocr_blocks: dict[int, list[Block]] = {}
    ocr_done = 0
    n_pages = len(pdf)
    for index in range(n_pages):
        page = pdf[index]
        try:
            lines = _page_lines(page, index + 1)
            if sum(len(ln.text) for ln in lines) >= _MIN_TEXT_CHARS or not _has_image(page):
                text_lines.extend(lines)
            elif ocr_done < max_ocr_pages:
                ocr_blocks[index + 1] = ocr_image(_render(page), page=index + 1)
                ocr_done += 1
            elif ocr_done == max_ocr_pages:
                doc.warnings.append(f"OCR limited to the first {max_ocr_pages} scanned pages")
                ocr_done += 1
        finally:
            page.close()
    text_blocks = _lines_to_blocks(text_lines)
    # Merge text-layer and OCR blocks back into page order.
    by_page: dict[int, list[Block]] = {}
    for block in text_blocks:
        by_page.setdefault(block.page or 0, []).append(block)
    by_page.update(ocr_blocks)
    doc.blocks = [b for p in sorted(by_page) for b in by_page[p]]
    return doc


def _page_lines(page: pdfium.PdfPage, page_no: int) -> list[_Line]:
    textpage = page.get_textpage()
    try:
        raw = textpage.raw
        n = textpage.count_chars()
        lines: list[_Line] = []
        chars: list[str] = []
        sizes: list[float] = []
        baseline: float | None = None

        def end_line() -> None:
            text = squash("".join(chars))
            if text and not _PAGE_NUMBER.match(text):
                size = statistics.median(sizes) if sizes else 0.0
                lines.append(_Line(text, round(size, 1), baseline or 0.0, page_no))
            chars.clear()
            sizes.clear()

        for i in range(n):
            ch = chr(pdfium_c.FPDFText_GetUnicode(raw, i))
            if ch == "\n":
                end_line()
                baseline = None
                continue
            if ch in "\r\x00\ufffe":
                continue
            chars.append(ch)
            if not ch.isspace():
                sizes.append(pdfium_c.FPDFText_GetFontSize(raw, i))
                if baseline is None:
                    baseline = textpage.get_charbox(i)[1]
        end_line()
        return lines
    finally:
        textpage.close()


def _has_image(page: pdfium.PdfPage) -> bool:
    return any(True for _ in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=3))


def _render(page: pdfium.PdfPage) -> Image:
    width, height = page.get_size()
    scale = min(3.0, _OCR_LONG_SIDE_PX / max(width, height, 1.0))
    bitmap = page.render(scale=scale)
    try:
        return bitmap.to_pil()
    finally:
        bitmap.close()


def _lines_to_blocks(lines: list[_Line]) -> list[Block]:
    """Reflow visual lines into paragraphs; lines set clearly larger than body text are headings."""
    if not lines:
        return []
    weights: Counter[float] = Counter()
    for ln in lines:
        weights[ln.size] += len(ln.text)
    body = weights.most_common(1)[0][0]
    heading_sizes = sorted({ln.size for ln in lines if _is_heading(ln, body)}, reverse=True)
    level_of = {size: min(i + 1, 6) for i, size in enumerate(heading_sizes)}
    spacings = [
        a.baseline - b.baseline
        for a, b in itertools.pairwise(lines)
        if a.page == b.page and a.size == b.size == body and a.baseline > b.baseline
    ]
    line_gap = statistics.median(spacings) if spacings else body * 1.2

    blocks: list[Block] = []
    para: list[str] = []
    para_page: int | None = None

    def flush() -> None:
        nonlocal para_page
        if para:
            blocks.append(Paragraph(_join_lines(para), page=para_page))
        para.clear()
        para_page = None

    prev: _Line | None = None
    for ln in lines:
        if _is_heading(ln, body):
            flush()
            blocks.append(Heading(level=level_of[ln.size], text=ln.text, page=ln.page))
            prev = None
            continue
        # New paragraph on a new page, a clearly bigger vertical gap, or a font size change.
        if prev is not None and (
            ln.page != prev.page or prev.baseline - ln.baseline > 1.45 * line_gap or ln.size != prev.size
        ):
            flush()
        if para_page is None:
            para_page = ln.page
        para.append(ln.text)
        prev = ln
    flush()
    return blocks


def _is_heading(ln: _Line, body: float) -> bool:
    return ln.size >= body * 1.15 and len(ln.text) <= 120 and not ln.text.endswith((".", ",", ";"))


def _join_lines(lines: list[str]) -> str:
    out = lines[0]
    for line in lines[1:]:
        # Undo end-of-line hyphenation ("config-\nuration") but keep real hyphens ("e-mail").
        if out.endswith("-") and len(out) > 1 and out[-2].isalpha() and line[:1].islower():
            out = out[:-1] + line
        else:
            out += " " + line
    return out
