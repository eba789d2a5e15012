"""Value types shared by parsing, chunking, indexing and retrieval."""

from __future__ import annotations

from dataclasses import dataclass, field

# Bump when the chunker's output for the same input changes, so an index built by an
# older chunker is detected at start-up and rebuilt with `rag-gateway reindex`.
CHUNK_SCHEMA_VERSION = 1


@dataclass(slots=True)
class Chunk:
    """One retrievable passage of a document, with everything a citation needs."""

    id: str  # stable: f"{doc_id}#{ordinal}"
    doc_id: str  # the document's id inside the tenant (relative path or caller-given id)
    text: str  # the passage itself (tables keep their header row, code stays fenced)
    source: str  # where it came from: relative path or URL, shown in citations
    title: str
    section: str = ""  # heading breadcrumb, "Guide > Install > Linux"
    page: int | None = None  # 1-based page for paged formats
    doc_date: str | None = None  # ISO date or version string of the document
    content_hash: str = ""  # sha256 of the document's bytes (for incremental ingest)
    kind: str = "text"  # "text" | "table" | "code"
    ordinal: int = 0


@dataclass(slots=True)
class ParsedFile:
    """Outcome of turning one file into chunks."""

    path: str
    outcome: str  # "ok" | "skipped" | "error"
    reason: str = ""
    chunks: list[Chunk] = field(default_factory=list)
    content_hash: str = ""
    title: str = ""
    doc_date: str | None = None
