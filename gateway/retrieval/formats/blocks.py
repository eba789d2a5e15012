"""The structured intermediate form every format parser produces and the chunker consumes.

Keeping parsing and chunking apart through this small model means each format only has to
say what it saw (headings, prose, tables, code, pages) and never how to cut it up.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Heading:
    level: int  # 1 = top level
    text: str
    page: int | None = None


@dataclass(slots=True)
class Paragraph:
    text: str
    page: int | None = None


@dataclass(slots=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    page: int | None = None


@dataclass(slots=True)
class Code:
    text: str
    language: str = ""
    page: int | None = None


Block = Heading | Paragraph | Table | Code


@dataclass(slots=True)
class Document:
    """What a format parser extracted from one file, before chunking."""

    title: str = ""
    date: str | None = None  # ISO 8601 date (YYYY-MM-DD) when the source states one
    version: str | None = None  # version string when the source states one
    blocks: list[Block] = field(default_factory=list)
    # Non-fatal notes for the caller, e.g. "OCR limited to the first 50 pages".
    warnings: list[str] = field(default_factory=list)


class ParseError(Exception):
    """Input is unusable (corrupt, encrypted, no text): becomes an "error" outcome."""
