"""Raster images (PNG, JPEG, TIFF, ...) through OCR; each TIFF frame is a page."""

from __future__ import annotations

import io

from PIL import Image, ImageSequence

from .blocks import Block, Document, ParseError
from .ocr import ocr_image

MAX_FRAMES = 50  # multi-page TIFF scans beyond this are cut, with a warning


def parse_image(data: bytes, max_pages: int = MAX_FRAMES) -> Document:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise ParseError(f"unreadable image: {exc}") from exc
    doc = Document()
    n_frames = getattr(img, "n_frames", 1)
    paged = n_frames > 1
    blocks: list[Block] = []
    for index, frame in enumerate(ImageSequence.Iterator(img)):
        if index >= max_pages:
            doc.warnings.append(f"OCR limited to the first {max_pages} of {n_frames} pages")
            break
        blocks.extend(ocr_image(frame, page=index + 1 if paged else None))
    doc.blocks = blocks
    return doc
