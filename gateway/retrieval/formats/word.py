"""DOCX via python-docx: heading styles, paragraphs, lists and tables in document order."""

from __future__ import annotations

import io
import re

from .blocks import Block, Document, Heading, Paragraph, ParseError, Table
from .dates import to_iso_date
from .textutil import squash

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def parse_docx(data: bytes) -> Document:
    if data.startswith(_OLE_MAGIC):
        # Password-protected .docx files are OLE containers, as are legacy .doc files.
        raise ParseError("encrypted or legacy binary Word file")
    import docx
    from docx.table import Table as DocxTable
    from docx.text.paragraph import Paragraph as DocxParagraph

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx surfaces zip, XML and key errors alike
        raise ParseError(f"corrupt DOCX: {type(exc).__name__}: {exc}") from exc

    props = document.core_properties
    doc = Document(
        title=squash(props.title or ""),
        date=to_iso_date(props.modified or props.created),
        version=squash(props.version or "") or None,
    )
    blocks: list[Block] = []
    list_lines: list[str] = []

    def flush_list() -> None:
        if list_lines:
            blocks.append(Paragraph("\n".join(list_lines)))
            list_lines.clear()

    for item in document.iter_inner_content():
        if isinstance(item, DocxTable):
            flush_list()
            table = _table(item)
            if table is not None:
                blocks.append(table)
            continue
        assert isinstance(item, DocxParagraph)
        text = item.text.strip()
        if not text:
            continue
        style = (item.style.name if item.style is not None else "") or ""
        if style.lower() == "title":
            flush_list()
            doc.title = doc.title or squash(text)
        elif m := _HEADING_STYLE.match(style):
            flush_list()
            blocks.append(Heading(level=int(m.group(1)), text=squash(text)))
        elif style.lower().startswith("list"):
            list_lines.append("- " + squash(text))
        else:
            flush_list()
            blocks.append(Paragraph(text))
    flush_list()
    doc.blocks = blocks
    return doc


def _table(table: object) -> Table | None:
    rows: list[list[str]] = []
    for row in table.rows:  # type: ignore[attr-defined]
        cells = [squash(cell.text) for cell in row.cells]
        if any(cells):
            rows.append(cells)
    if not rows:
        return None
    return Table(header=rows[0], rows=rows[1:])
