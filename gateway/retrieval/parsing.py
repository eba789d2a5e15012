"""Entry points for ingestion: one file (or uploaded bytes) in, a ParsedFile with chunks out.

Never raises for bad input: unsupported or oversized files come back "skipped", unreadable
ones (corrupt, encrypted, empty, no text) come back "error" with a reason the caller can
show. Work is synchronous and CPU-bound (PDFium, OCR); callers run it in worker threads.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path, PurePosixPath

from .chunking import ChunkingConfig, chunk_document
from .formats import TEXT_KINDS, ParseError, detect_kind, parse_document
from .formats.ocr import OcrUnavailable
from .formats.textutil import looks_binary
from .types import ParsedFile

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 50_000_000
DEFAULT_MAX_OCR_PAGES = 50


def content_hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_supported(name: str) -> bool:
    """Cheap check for directory walks: would parse_file try this file at all?"""
    return detect_kind(name) is not None


def parse_file(
    path: Path,
    *,
    root: Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    chunking: ChunkingConfig | None = None,
    max_ocr_pages: int = DEFAULT_MAX_OCR_PAGES,
) -> ParsedFile:
    """Parse and chunk a file on disk. doc_id and source are its path relative to `root`
    (posix separators), or its file name when no root is given."""
    doc_id = document_id(path, root)
    if detect_kind(path.name) is None:
        return ParsedFile(path=doc_id, outcome="skipped", reason=f"unsupported file type: {path.name}")
    try:
        stat = path.stat()
        if not path.is_file():
            return ParsedFile(path=doc_id, outcome="error", reason="not a regular file")
        if stat.st_size > max_bytes:
            return ParsedFile(
                path=doc_id, outcome="skipped", reason=f"too large: {stat.st_size} bytes > limit {max_bytes}"
            )
        data = path.read_bytes()
    except OSError as exc:
        return ParsedFile(path=doc_id, outcome="error", reason=f"unreadable: {exc.strerror or exc}")
    return parse_bytes(
        path.name,
        data,
        doc_id=doc_id,
        source=doc_id,
        max_bytes=max_bytes,
        chunking=chunking,
        max_ocr_pages=max_ocr_pages,
    )


def parse_bytes(
    name: str,
    data: bytes,
    *,
    doc_id: str | None = None,
    source: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    chunking: ChunkingConfig | None = None,
    max_ocr_pages: int = DEFAULT_MAX_OCR_PAGES,
) -> ParsedFile:
    """Parse and chunk uploaded bytes. `name` (a file name) selects the format; doc_id and
    source default to it. A document's date comes only from the document itself (front matter,
    PDF/DOCX metadata, a dated heading): a file's modification or upload time says when it was
    copied, not when it was written, so undated documents stay undated."""
    doc_id = doc_id if doc_id is not None else PurePosixPath(name.replace("\\", "/")).as_posix()
    source = source if source is not None else doc_id
    detected = detect_kind(name)
    if detected is None:
        return ParsedFile(path=doc_id, outcome="skipped", reason=f"unsupported file type: {name}")
    if len(data) > max_bytes:
        return ParsedFile(
            path=doc_id, outcome="skipped", reason=f"too large: {len(data)} bytes > limit {max_bytes}"
        )
    digest = content_hash(data)
    kind, language = detected

    def error(reason: str) -> ParsedFile:
        return ParsedFile(path=doc_id, outcome="error", reason=reason, content_hash=digest)

    if not data.strip():
        return error("empty file")
    if kind in TEXT_KINDS and looks_binary(data):
        return error(f"binary content in a {kind} file")
    try:
        doc = parse_document(kind, language, data, max_ocr_pages=max_ocr_pages)
    except ParseError as exc:
        return error(str(exc))
    except OcrUnavailable as exc:
        return error(str(exc))
    except Exception as exc:  # a parser library choking on hostile input must not kill ingestion
        log.warning("parse failed for %s (%s)", doc_id, kind, exc_info=True)
        return error(f"unreadable {kind}: {type(exc).__name__}: {exc}")

    doc.title = doc.title or PurePosixPath(doc_id).name
    try:
        chunks = chunk_document(doc, doc_id=doc_id, source=source, content_hash=digest, config=chunking)
    except Exception as exc:  # a chunker bug should cost one file, not the whole ingest
        log.exception("chunking failed for %s", doc_id)
        return error(f"chunking failed: {type(exc).__name__}: {exc}")
    if not chunks:
        return error("no text recognised" if kind == "image" else "no extractable text")
    return ParsedFile(
        path=doc_id,
        outcome="ok",
        reason="; ".join(doc.warnings),
        chunks=chunks,
        content_hash=digest,
        title=doc.title,
        doc_date=doc.date or doc.version,
    )


def document_id(path: Path, root: Path | None) -> str:
    """A file's id in its tenant's corpus: its path relative to the ingested folder."""
    if root is None:
        return path.name
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        # Outside the root (e.g. a symlink target): keep it unique rather than fail.
        return path.resolve().as_posix()
