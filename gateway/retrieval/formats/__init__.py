"""Format detection and dispatch: file name -> parser -> Document.

Each format lives in its own module; they share the `blocks` model and raise `ParseError`
for inputs that cannot be used.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from .blocks import Block, Code, Document, Heading, Paragraph, ParseError, Table
from .source import LANGUAGES, NAMED_FILES

__all__ = [
    "Block",
    "Code",
    "Document",
    "Heading",
    "Paragraph",
    "ParseError",
    "Table",
    "detect_kind",
    "parse_document",
]

_EXTENSIONS: dict[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdown": "markdown",
    ".mdx": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".adoc": "text",
    ".log": "text",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".tif": "image",
    ".tiff": "image",
    ".bmp": "image",
    ".webp": "image",
    ".csv": "csv",
    ".tsv": "tsv",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".docx": "docx",
}
_TEXT_NAMES = {"readme", "license", "licence", "changelog", "authors", "notice", "contributing"}
# Kinds whose bytes must be text; a NUL byte means the name lies about the content.
TEXT_KINDS = {"markdown", "text", "html", "csv", "tsv", "source"}


def detect_kind(name: str) -> tuple[str, str] | None:
    """(kind, language) for a file name, or None when the type is not supported."""
    path = PurePosixPath(name.replace("\\", "/"))
    suffix = path.suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix], ""
    if suffix in LANGUAGES:
        return "source", LANGUAGES[suffix]
    stem = path.name.lower()
    if stem in NAMED_FILES:
        return "source", NAMED_FILES[stem]
    if not suffix and stem in _TEXT_NAMES:
        return "text", ""
    return None


def parse_document(kind: str, language: str, data: bytes, *, max_ocr_pages: int = 50) -> Document:
    """Run the parser for `kind`. Imports are local so a missing optional library only
    affects its own format, and start-up does not pay for PDFium/OCR/openpyxl."""
    if kind == "markdown":
        from .markdown import parse_markdown

        return parse_markdown(data)
    if kind == "text":
        from .plaintext import parse_plaintext

        return parse_plaintext(data)
    if kind == "html":
        from .htmlpage import parse_html

        return parse_html(data)
    if kind == "pdf":
        from .pdf import parse_pdf

        return parse_pdf(data, max_ocr_pages=max_ocr_pages)
    if kind == "image":
        from .image import parse_image

        return parse_image(data, max_pages=max_ocr_pages)
    if kind in ("csv", "tsv"):
        from .tabular import parse_csv

        return parse_csv(data, delimiter="\t" if kind == "tsv" else None)
    if kind == "xlsx":
        from .tabular import parse_xlsx

        return parse_xlsx(data)
    if kind == "docx":
        from .word import parse_docx

        return parse_docx(data)
    if kind == "source":
        from .source import parse_source

        return parse_source(data, language)
    raise ValueError(f"unknown kind {kind!r}")
