"""OCR through RapidOCR 3 (PP-OCRv6 small models run by onnxruntime; they ship in the wheel,
so nothing is downloaded at run time). The older rapidocr-onnxruntime (PP-OCRv4) was tried
first and dropped: it glued English words together ("Effectivedate:1September2023").

The engine takes ~0.4 s and a few hundred MB to build, so it is created on first use and
shared; calls are serialised because one engine is not documented as thread-safe, and on
a 2-core machine parallel OCR would only contend for the same cores anyway.
"""

from __future__ import annotations

import itertools
import statistics
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .blocks import Block, Heading, Paragraph

if TYPE_CHECKING:
    from PIL.Image import Image

_MIN_SCORE = 0.5  # recognitions below this are mostly noise (specks, rules, stamps)
_engine: Any = None
_engine_lock = threading.Lock()
_run_lock = threading.Lock()


class OcrUnavailable(RuntimeError):
    """The OCR package is not installed."""


def _get_engine() -> Any:
    global _engine
    with _engine_lock:
        if _engine is None:
            try:
                from rapidocr import RapidOCR
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise OcrUnavailable("OCR unavailable: the rapidocr package is not installed") from exc
            # Its INFO logging announces every model load on stderr; warnings still show.
            _engine = RapidOCR(params={"Global.log_level": "warning"})
        return _engine


@dataclass(slots=True)
class _Line:
    text: str
    top: float
    bottom: float
    left: float

    @property
    def height(self) -> float:
        return self.bottom - self.top


def ocr_image(image: Image, page: int | None = None) -> list[Block]:
    """Recognise text and rebuild reading order: lines top to bottom, gaps make paragraphs,
    and clearly taller lines become headings (scanned documents keep their structure)."""
    import numpy as np

    engine = _get_engine()
    rgb = np.asarray(image.convert("RGB"))
    with _run_lock:
        out = engine(rgb)
    if out.boxes is None or out.txts is None or out.scores is None:
        return []
    lines = _group_lines(list(zip(out.boxes.tolist(), out.txts, out.scores, strict=True)))
    return _to_blocks(lines, page)


def _group_lines(result: list[Any]) -> list[_Line]:
    boxes: list[_Line] = []
    for box, text, score in result:
        if float(score) < _MIN_SCORE or not str(text).strip():
            continue
        ys = [p[1] for p in box]
        xs = [p[0] for p in box]
        boxes.append(_Line(str(text).strip(), min(ys), max(ys), min(xs)))
    boxes.sort(key=lambda b: (b.top + b.bottom) / 2)
    lines: list[list[_Line]] = []
    for b in boxes:
        # Same visual line when vertical centres are within half a box height.
        if lines:
            last = lines[-1][-1]
            if abs((b.top + b.bottom) / 2 - (last.top + last.bottom) / 2) < 0.5 * min(b.height, last.height):
                lines[-1].append(b)
                continue
        lines.append([b])
    merged: list[_Line] = []
    for parts in lines:
        parts.sort(key=lambda b: b.left)
        merged.append(
            _Line(
                " ".join(p.text for p in parts),
                min(p.top for p in parts),
                max(p.bottom for p in parts),
                parts[0].left,
            )
        )
    return merged


def _to_blocks(lines: list[_Line], page: int | None) -> list[Block]:
    if not lines:
        return []
    body_height = statistics.median(ln.height for ln in lines)
    gaps = [b.top - a.bottom for a, b in itertools.pairwise(lines)]
    body_gap = statistics.median(gaps) if gaps else 0.0
    blocks: list[Block] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            blocks.append(Paragraph(" ".join(para), page=page))
            para.clear()

    prev: _Line | None = None
    for ln in lines:
        is_heading = ln.height >= 1.35 * body_height and len(ln.text) <= 80
        if is_heading:
            flush()
            level = 1 if ln.height >= 1.8 * body_height else 2
            blocks.append(Heading(level=level, text=ln.text, page=page))
        else:
            if prev is not None and ln.top - prev.bottom > max(body_gap * 1.8, body_height * 0.6):
                flush()
            para.append(ln.text)
        prev = ln
    flush()
    return blocks
