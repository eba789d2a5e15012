"""Rebuild a tenant's index into a new collection and swap it in, with no downtime.

Searches keep reading the live collection while the new one is built (marked `building`); the
swap is one metadata write, and the old collection is dropped afterwards. A crash before the swap
leaves the old index live (the half-built one is cleaned up by the next rebuild). Sources are
either files (re-parsed with the current chunker) or the stored chunks (re-embedded: enough when
only the embedding model changed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.retrieval.embedder import Embedder
from gateway.retrieval.index import IndexStore, TenantIndex
from gateway.retrieval.ingest import FileReport, Ingestor, IngestReport, IngestSettings

log = logging.getLogger("rag_gateway.reindex")
BATCH_CHUNKS = 512


@dataclass(slots=True)
class ReindexResult:
    tenant: str
    old_collection: str
    new_collection: str
    documents: int
    chunks: int
    corpus_version: int
    seconds: float
    report: IngestReport


def reindex(
    store: IndexStore,
    embedder: Embedder,
    tenant: str,
    paths: list[Path] | None = None,
    settings: IngestSettings | None = None,
    report: IngestReport | None = None,
) -> ReindexResult:
    """`report`: filled in as documents are done, for a caller that shows progress meanwhile."""
    started = time.perf_counter()
    report = report if report is not None else IngestReport(tenant)
    live = store.tenant(tenant)
    old_name = live.collection_name
    fresh = store.begin_rebuild(tenant)
    try:
        if paths:
            Ingestor(fresh, embedder, settings).ingest_paths(tenant, paths, report=report)
        else:
            documents = live.documents()
            report.files_total = len(documents)
            pending: list[tuple[str, list]] = []
            size = 0
            for doc_id, chunks in documents.items():
                pending.append((doc_id, chunks))
                size += len(chunks)
                if size >= BATCH_CHUNKS:
                    _write(fresh, embedder, pending, report)
                    pending, size = [], 0
            if pending:
                _write(fresh, embedder, pending, report)
    except BaseException:
        store.abort_rebuild(fresh)
        raise
    store.commit_rebuild(tenant, fresh)
    log.info("tenant %s: %s replaced by %s", tenant, old_name, fresh.collection_name)
    return ReindexResult(
        tenant,
        old_name,
        fresh.collection_name,
        len(fresh.document_hashes()),
        len(fresh),
        fresh.corpus_version(),
        round(time.perf_counter() - started, 3),
        report,
    )


def _write(
    fresh: TenantIndex, embedder: Embedder, docs: list[tuple[str, list]], report: IngestReport
) -> None:
    fresh.apply(upserts=_embed(embedder, docs))
    for doc_id, chunks in docs:
        report.files.append(FileReport(doc_id, "reembedded", len(chunks)))
        report.chunks_embedded += len(chunks)


def _embed(embedder: Embedder, docs: list[tuple[str, list]]) -> list[tuple[str, list, np.ndarray]]:
    texts = [c.text for _, chunks in docs for c in chunks]
    vectors = embedder.embed(texts)
    out = []
    offset = 0
    for doc_id, chunks in docs:
        out.append((doc_id, chunks, vectors[offset : offset + len(chunks)]))
        offset += len(chunks)
    return out
