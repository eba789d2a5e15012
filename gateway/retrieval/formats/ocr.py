"""OCR through RapidOCR 3 (PP-OCRv6 small models run by onnxruntime; they ship in the wheel,
so nothing is downloaded at run time). The older rapidocr-onnxruntime (PP-OCRv4) was tried
first and dropped: it glued English words together ("Effectivedate:1September2023").

The engine runs in a child process, created on first use and retired after `IDLE_EXIT_S`
without work: its models and onnxruntime arenas grow to ~800 MB over a few scanned pages, and a
gateway that ingested scans once must not hold that while it serves (the sample corpus took the
serving process from 290 MB to 1.1 GB in-process). Calls are serialised because one engine is not
documented as thread-safe, and on a 2-core machine parallel OCR would only contend for the same
cores anyway.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pickle
import statistics
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from .blocks import Block, Heading, Paragraph

if TYPE_CHECKING:
    from PIL.Image import Image

_MIN_SCORE = 0.5  # recognitions below this are mostly noise (specks, rules, stamps)
IDLE_EXIT_S = 20.0  # the OCR process exits after this long without a page to read
_engine: Any = None  # in the OCR process only
_engine_lock = threading.Lock()


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

    rgb = np.asarray(image.convert("RGB"))
    lines = _group_lines(_worker.recognise(rgb))
    return _to_blocks(lines, page)


def _recognise(rgb: Any) -> list[tuple[list, str, float]]:
    """In the OCR process: (box, text, score) for each recognised line."""
    out = _get_engine()(rgb)
    if out.boxes is None or out.txts is None or out.scores is None:
        return []
    return [
        (box, str(text), float(score))
        for box, text, score in zip(out.boxes.tolist(), out.txts, out.scores, strict=True)
    ]


def _send(stream: BinaryIO, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("!Q", len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("the OCR process closed its pipe")
    (size,) = struct.unpack("!Q", header)
    return pickle.loads(stream.read(size))  # our own child, on our own pipe


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The OCR process's loop: an RGB array in, ("ok", lines) or ("error", message) out, until EOF."""
    while True:
        try:
            rgb = _receive(requests)
        except EOFError:
            return
        try:
            _send(replies, ("ok", _recognise(rgb)))
        except OcrUnavailable as exc:
            _send(replies, ("unavailable", str(exc)))
        except Exception as exc:  # one bad page must not end the process
            _send(replies, ("error", f"{type(exc).__name__}: {exc}"))


class _OcrProcess:
    """One child process holding the engine, started on demand and retired when idle.

    A plain subprocess (`python -m gateway.retrieval.formats.ocr`), not multiprocessing: spawn
    would re-import the embedding application's __main__, and fork would copy a serving
    process's threads and locks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one page at a time, and the process's lifecycle
        self._proc: subprocess.Popen[bytes] | None = None
        self._timer: threading.Timer | None = None

    def recognise(self, rgb: Any) -> list[tuple[list, str, float]]:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            try:
                proc = self._proc if self._proc is not None and self._proc.poll() is None else self._start()
                assert proc.stdin is not None and proc.stdout is not None
                _send(proc.stdin, rgb)
                status, value = _receive(proc.stdout)
            except (OSError, EOFError) as exc:  # the child died (killed, out of memory): start anew next page
                self._stop()
                raise RuntimeError(f"the OCR process failed: {exc}") from exc
            finally:
                self._timer = threading.Timer(IDLE_EXIT_S, self._retire)
                self._timer.daemon = True
                self._timer.start()
        if status == "unavailable":
            raise OcrUnavailable(value)
        if status == "error":
            raise RuntimeError(f"OCR failed: {value}")
        return value

    def _start(self) -> subprocess.Popen[bytes]:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.retrieval.formats.ocr"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # EOF: the child's loop returns
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _retire(self) -> None:
        with self._lock:
            self._stop()


_worker = _OcrProcess()
atexit.register(_worker._retire)


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


if __name__ == "__main__":
    # Replies go on a private copy of stdout; anything the OCR packages print goes to stderr.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, replies)
