"""Ingestion: files in, chunks embedded and written to the tenant's index, a report out.

Parsing (and OCR) runs in a thread pool ahead of the embedder, so the embedder, the slowest
step, is kept busy; embeddings are computed in batches across documents and written with one
index change per batch. A file whose content hash matches the indexed one is not re-embedded.
Every file gets a line in the report: added, updated, unchanged, deleted, skipped or error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gateway.heap import release_freed_memory
from gateway.retrieval.chunking import ChunkingConfig
from gateway.retrieval.embedder import Embedder
from gateway.retrieval.index import TenantIndex
from gateway.retrieval.parsing import content_hash, document_id, parse_bytes, parse_file
from gateway.retrieval.types import Chunk, ParsedFile

log = logging.getLogger("rag_gateway.ingest")
EMBED_BATCH_CHUNKS = 256  # chunks per write: bounds memory and makes progress visible
EMBED_SLICE_CHUNKS = 32  # chunks per embedder call: how long a stop waits at most


@dataclass(slots=True)
class FileReport:
    doc_id: str
    outcome: str  # added | updated | unchanged | deleted | skipped | error
    chunks: int = 0
    reason: str = ""


@dataclass(slots=True)
class IngestReport:
    tenant: str
    files: list[FileReport] = field(default_factory=list)
    corpus_version: int = 0
    chunks_embedded: int = 0
    seconds: float = 0.0
    files_total: int = 0  # known once the folders are walked (progress while ingesting)
    stopped: bool = False  # ended early by Ingestor.stopping

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.files:
            counts[f.outcome] = counts.get(f.outcome, 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": self.counts()}

    @property
    def failed(self) -> bool:
        return any(f.outcome == "error" for f in self.files)


@dataclass(slots=True)
class IngestSettings:
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    max_file_bytes: int = 50_000_000
    parse_threads: int = 2


def walk(paths: Iterable[Path]) -> Iterator[tuple[Path, Path]]:
    """(file, root) pairs: a folder's files relative to that folder, a file relative to its parent."""
    for path in paths:
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        yield Path(dirpath) / name, path
        else:
            yield path, path.parent


class _Batch:
    def __init__(self) -> None:
        self.docs: list[tuple[ParsedFile, str]] = []  # parsed file, outcome (added/updated)
        self.chunks = 0

    def add(self, parsed: ParsedFile, outcome: str) -> None:
        self.docs.append((parsed, outcome))
        self.chunks += len(parsed.chunks)


class Ingestor:
    def __init__(
        self, index: TenantIndex, embedder: Embedder, settings: IngestSettings | None = None
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.settings = settings or IngestSettings()
        # Set from another thread to stop after the current file or embedding slice (a shutdown
        # during a seed ingest); what was written so far stays, a later run picks up the rest.
        self.stopping = threading.Event()

    def ingest_paths(
        self, tenant: str, paths: list[Path], *, sync: bool = False, report: IngestReport | None = None
    ) -> IngestReport:
        """`report`: filled in as files are done, for a caller that shows progress meanwhile."""
        started = time.perf_counter()
        report = report if report is not None else IngestReport(tenant)
        missing = [p for p in paths if not p.exists()]
        for p in missing:
            report.files.append(FileReport(str(p), "error", reason="no such file or folder"))
        pairs = list(walk(p for p in paths if p.exists()))
        report.files_total = len(pairs) + len(missing)
        known = self.index.document_hashes()
        seen: set[str] = set()
        s = self.settings

        def parse(pair: tuple[Path, Path]) -> ParsedFile:
            file, root = pair
            doc_id = document_id(file, root)  # the id parse_file will give it
            if doc_id in known:
                # Hash the bytes before parsing: an unchanged PDF or scan costs a read, not OCR.
                try:
                    if file.stat().st_size <= s.max_file_bytes:
                        digest = content_hash(file.read_bytes())
                        if digest == known[doc_id]:
                            return ParsedFile(path=doc_id, outcome="unchanged", content_hash=digest)
                except OSError:
                    pass  # parse_file reports the problem
            return parse_file(file, root=root, max_bytes=s.max_file_bytes, chunking=s.chunking)

        with ThreadPoolExecutor(max_workers=s.parse_threads, thread_name_prefix="parse") as pool:
            # map() keeps at most the pool's queue ahead; files are parsed while earlier ones embed.
            self._consume(pool.map(parse, pairs), known, seen, report)
        if sync and not report.stopped:  # a stopped run has not seen every file: delete nothing
            self._delete_unseen(known, seen, report)
        report.corpus_version = self.index.corpus_version()
        report.seconds = round(time.perf_counter() - started, 3)
        release_freed_memory()
        return report

    def ingest_bytes(
        self, tenant: str, name: str, data: bytes, doc_id: str | None = None, *, cite_name: bool = False
    ) -> IngestReport:
        return self.ingest_many(tenant, [(name, data, doc_id)], cite_name=cite_name)

    def ingest_many(
        self,
        tenant: str,
        items: Iterable[tuple[str, bytes, str | None]],
        *,
        sync: bool = False,
        cite_name: bool = False,
    ) -> IngestReport:
        """Ingest in-memory documents (name selects the format); batched like files are.

        `cite_name`: citations show the name rather than the doc_id (a vector store's file is kept
        under its file id, and cited by its file name)."""
        started = time.perf_counter()
        report = IngestReport(tenant)
        known = self.index.document_hashes()
        seen: set[str] = set()
        s = self.settings

        def parse(item: tuple[str, bytes, str | None]) -> ParsedFile:
            name, data, doc_id = item
            source = name if cite_name else None
            return parse_bytes(
                name, data, doc_id=doc_id, source=source, max_bytes=s.max_file_bytes, chunking=s.chunking
            )

        with ThreadPoolExecutor(max_workers=s.parse_threads, thread_name_prefix="parse") as pool:
            self._consume(pool.map(parse, items), known, seen, report)
        if sync:
            self._delete_unseen(known, seen, report)
        report.corpus_version = self.index.corpus_version()
        report.seconds = round(time.perf_counter() - started, 3)
        release_freed_memory()
        return report

    def _delete_unseen(self, known: dict[str, str], seen: set[str], report: IngestReport) -> None:
        gone = sorted(set(known) - seen)
        if gone:
            self.index.apply(deletes=gone)
            report.files.extend(FileReport(doc_id, "deleted") for doc_id in gone)

    def _consume(
        self, parsed_files: Iterable[ParsedFile], known: dict[str, str], seen: set[str], report: IngestReport
    ) -> None:
        batch = _Batch()
        for parsed in parsed_files:
            if self.stopping.is_set():
                report.stopped = True
                break
            doc_id = parsed.path
            if parsed.outcome == "unchanged":
                seen.add(doc_id)
                report.files.append(FileReport(doc_id, "unchanged"))
                continue
            if parsed.outcome != "ok":
                if parsed.outcome == "error" and doc_id in known:
                    seen.add(doc_id)  # a file that broke keeps its last good version (not deleted by --sync)
                report.files.append(FileReport(doc_id, parsed.outcome, reason=parsed.reason))
                continue
            seen.add(doc_id)
            if known.get(doc_id) == parsed.content_hash:
                report.files.append(FileReport(doc_id, "unchanged", len(parsed.chunks)))
                continue
            batch.add(parsed, "updated" if doc_id in known else "added")
            if batch.chunks >= EMBED_BATCH_CHUNKS:
                self._flush(batch, report)
                batch = _Batch()
        if batch.docs and not report.stopped:  # a stopping run drops its pending batch: no embed wait
            self._flush(batch, report)

    def _flush(self, batch: _Batch, report: IngestReport) -> None:
        chunks: list[Chunk] = [c for parsed, _ in batch.docs for c in parsed.chunks]
        # Embedded in slices so that a stop (shutdown) waits for one slice, not the whole batch;
        # a stopped batch writes nothing, and the next run embeds it again.
        slices: list[np.ndarray] = []
        for start in range(0, len(chunks), EMBED_SLICE_CHUNKS):
            if self.stopping.is_set():
                report.stopped = True
                return
            slices.append(self.embedder.embed([c.text for c in chunks[start : start + EMBED_SLICE_CHUNKS]]))
        vectors = np.concatenate(slices)
        upserts = []
        offset = 0
        for parsed, outcome in batch.docs:
            n = len(parsed.chunks)
            upserts.append((parsed.path, parsed.chunks, vectors[offset : offset + n]))
            offset += n
            report.files.append(FileReport(parsed.path, outcome, n, parsed.reason))
        self.index.apply(upserts=upserts)
        report.chunks_embedded += len(chunks)
        log.info("indexed %d chunks of %d documents", len(chunks), len(batch.docs))


def format_report(report: IngestReport) -> str:
    lines = [
        f"{f.outcome:<9} {f.doc_id}"
        + (f"  ({f.chunks} chunks)" if f.chunks else "")
        + (f"  {f.reason}" if f.reason else "")
        for f in report.files
    ]
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts().items()))
    lines.append(
        f"tenant {report.tenant}: {counts}; {report.chunks_embedded} chunks embedded in "
        f"{report.seconds:.1f}s; corpus version {report.corpus_version}"
    )
    return "\n".join(lines)
