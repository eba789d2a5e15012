"""CSV/TSV and Excel workbooks (.xlsx/.xlsm) as tables; the first non-empty row is the header."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable

from .blocks import Document, Heading, ParseError, Table
from .dates import to_iso_date
from .textutil import decode_text, squash

MAX_ROWS = 200_000  # per sheet/file; a bigger table is cut with a warning
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def parse_csv(data: bytes, delimiter: str | None = None) -> Document:
    text = decode_text(data)
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    doc = Document()
    table = _table(reader, doc)
    if table is not None:
        doc.blocks.append(table)
    return doc


def parse_xlsx(data: bytes) -> Document:
    if data.startswith(_OLE_MAGIC):
        # Password-protected .xlsx files are wrapped in an OLE container, as are legacy .xls.
        raise ParseError("encrypted or legacy binary Excel file")
    from openpyxl import load_workbook

    try:
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many unrelated types for broken zips/XML
        raise ParseError(f"corrupt workbook: {type(exc).__name__}: {exc}") from exc
    try:
        props = wb.properties
        doc = Document(title=squash(props.title or ""), date=to_iso_date(props.modified or props.created))
        sheets = wb.worksheets
        for ws in sheets:
            rows = (list(r) for r in ws.iter_rows(values_only=True))
            table = _table(rows, doc)
            if table is None:
                continue
            # A lone default-named sheet adds nothing to the breadcrumb.
            if len(sheets) > 1 or not ws.title.lower().startswith("sheet"):
                doc.blocks.append(Heading(level=1, text=squash(ws.title)))
            doc.blocks.append(table)
        return doc
    finally:
        wb.close()


def _table(rows: Iterable[list[object]], doc: Document) -> Table | None:
    header: list[str] | None = None
    body: list[list[str]] = []
    for raw in rows:
        row = [_cell(v) for v in raw]
        while row and not row[-1]:
            row.pop()
        if not row:
            continue
        if header is None:
            header = row
            continue
        if len(body) >= MAX_ROWS:
            doc.warnings.append(f"table cut at {MAX_ROWS} rows")
            break
        body.append(row)
    if header is None:
        return None
    return Table(header=header, rows=body)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return squash(str(value))
