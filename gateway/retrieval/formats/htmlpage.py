"""HTML: headings, paragraphs, lists, tables and <pre> code; page chrome and scripts dropped.

Uses the standard library's tolerant HTMLParser (no extra dependency); it copes with
unclosed tags, which is most of what "messy HTML" means in practice.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from .blocks import Block, Code, Document, Heading, Paragraph, Table
from .dates import to_iso_date
from .textutil import decode_text, squash

# Never content: code, styling, and navigation chrome repeated on every page of a site.
_SKIP_TAGS = {
    "script",
    "style",
    "noscript",
    "template",
    "nav",
    "footer",
    "aside",
    "svg",
    "iframe",
    "button",
    "select",
    "form",
    "canvas",
    "object",
}
_SKIP_ROLES = {"navigation", "contentinfo", "search", "banner", "complementary"}
_BLOCK_TAGS = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "blockquote",
    "dd",
    "dt",
    "dl",
    "figure",
    "figcaption",
    "address",
    "details",
    "summary",
    "hr",
    "body",
    "caption",
}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_VOID = {
    "br",
    "img",
    "hr",
    "meta",
    "link",
    "input",
    "source",
    "wbr",
    "col",
    "area",
    "base",
    "embed",
    "param",
    "track",
}
_DATE_META = (
    "article:modified_time",
    "last-modified",
    "dcterms.modified",
    "date",
    "dc.date",
    "article:published_time",
    "dcterms.created",
)
_LANG_CLASS = re.compile(r"(?:language|lang)-([\w+#-]+)")


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title = ""
        self.meta: dict[str, str] = {}
        self._skip_tag: str | None = None  # tag that opened the skipped subtree
        self._skip_depth = 0
        self._in_title = False
        self._buf: list[str] = []
        self._heading: int | None = None
        self._pre_depth = 0
        self._pre_lang = ""
        self._list_depth = 0
        self._list_lines: list[str] = []
        self._li_prefix = ""
        self._table_depth = 0
        self._rows: list[list[str]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._header_rows = 0  # leading rows that are header rows (<thead> or all-<th>)
        self._row_all_th = True
        self._in_thead = False

    # -- tag events -------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth += 1
            return
        attr = {k: (v or "") for k, v in attrs}
        if (
            tag in _SKIP_TAGS
            or attr.get("role") in _SKIP_ROLES
            or "hidden" in attr
            or attr.get("aria-hidden") == "true"
        ):
            if tag not in _VOID:
                self._skip_tag, self._skip_depth = tag, 1
            return
        if tag == "title":
            self._in_title = True
        elif tag == "meta":
            key = (attr.get("name") or attr.get("property") or attr.get("http-equiv") or "").lower()
            if key and attr.get("content"):
                self.meta.setdefault(key, attr["content"])
        elif self._pre_depth:
            if tag == "pre":
                self._pre_depth += 1
            elif tag == "code" and not self._pre_lang:
                self._pre_lang = _language(attr.get("class", ""))
        elif tag == "pre":
            self._flush()
            self._pre_depth = 1
            self._pre_lang = _language(attr.get("class", ""))
        elif tag == "table":
            self._table_depth += 1
            if self._table_depth == 1:
                self._flush()
                self._rows, self._header_rows = [], 0
        elif self._table_depth == 1 and tag == "thead":
            self._in_thead = True
        elif self._table_depth == 1 and tag == "tr":
            self._end_row()
            self._row, self._row_all_th = [], True
        elif self._table_depth == 1 and tag in ("td", "th"):
            self._end_cell()
            if self._row is None:
                self._row, self._row_all_th = [], True
            self._cell = []
            if tag == "td":
                self._row_all_th = False
        elif tag in _HEADINGS and not self._table_depth:
            self._flush()
            self._heading = _HEADINGS[tag]
        elif tag in ("ul", "ol") and not self._table_depth:
            if self._list_depth == 0:
                self._flush()
            else:
                self._end_list_item()
            self._list_depth += 1
        elif tag == "li" and self._list_depth:
            self._end_list_item()
            self._li_prefix = "  " * (self._list_depth - 1) + "- "
        elif tag == "br":
            self._text("\n")
        elif tag in _BLOCK_TAGS and not self._table_depth:
            if self._list_depth:
                self._text(" ")
            else:
                self._flush()
        elif tag == "img" and attr.get("alt"):
            self._text(" " + attr["alt"] + " ")

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag == "title":
            self._in_title = False
        elif self._pre_depth:
            if tag == "pre":
                self._pre_depth -= 1
                if self._pre_depth == 0:
                    code = "".join(self._buf).strip("\n")
                    self._buf = []
                    if code.strip():
                        self.blocks.append(Code(text=code, language=self._pre_lang))
        elif tag == "table" and self._table_depth:
            self._table_depth -= 1
            if self._table_depth == 0:
                self._end_row()
                self._emit_table()
        elif self._table_depth == 1 and tag == "thead":
            self._end_row()
            self._in_thead = False
        elif self._table_depth == 1 and tag == "tr":
            self._end_row()
        elif self._table_depth == 1 and tag in ("td", "th"):
            self._end_cell()
        elif tag in _HEADINGS and self._heading is not None:
            text = squash("".join(self._buf))
            self._buf = []
            if text:
                self.blocks.append(Heading(level=self._heading, text=text))
            self._heading = None
        elif tag in ("ul", "ol") and self._list_depth:
            self._end_list_item()
            self._list_depth -= 1
            if self._list_depth == 0 and self._list_lines:
                self.blocks.append(Paragraph("\n".join(self._list_lines)))
                self._list_lines = []
        elif tag == "li" and self._list_depth:
            self._end_list_item()
        elif tag in _BLOCK_TAGS and not self._table_depth and not self._list_depth:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip_tag is not None:
            return
        if self._in_title:
            self.title += data
        elif self._pre_depth:
            self._buf.append(data)
        elif self._cell is not None:
            self._cell.append(data)
        else:
            # Source line breaks are just whitespace in HTML; only <br> makes a newline.
            self._text(data.replace("\r", " ").replace("\n", " "))

    def close(self) -> None:
        super().close()
        if self._table_depth:
            self._end_row()
            self._emit_table()
        self._end_list_item()
        if self._list_lines:
            self.blocks.append(Paragraph("\n".join(self._list_lines)))
        self._flush()

    # -- helpers ----------------------------------------------------------------------------
    def _text(self, data: str) -> None:
        self._buf.append(data)

    def _flush(self) -> None:
        text = "\n".join(squash(line) for line in "".join(self._buf).split("\n"))
        text = "\n".join(line for line in text.split("\n") if line)
        self._buf = []
        if text:
            if self._heading is not None:
                self.blocks.append(Heading(level=self._heading, text=squash(text)))
            else:
                self.blocks.append(Paragraph(text))

    def _end_list_item(self) -> None:
        text = squash("".join(self._buf))
        self._buf = []
        if text:
            prefix = self._li_prefix or "  " * max(self._list_depth - 1, 0)
            self._list_lines.append(prefix + text)
        self._li_prefix = ""

    def _end_cell(self) -> None:
        if self._cell is not None and self._row is not None:
            self._row.append(squash("".join(self._cell)))
        self._cell = None

    def _end_row(self) -> None:
        self._end_cell()
        if self._row:
            if self._in_thead or (self._row_all_th and self._header_rows == len(self._rows)):
                self._header_rows += 1
            self._rows.append(self._row)
        self._row = None

    def _emit_table(self) -> None:
        rows = [r for r in self._rows if any(c for c in r)]
        self._rows = []
        if not rows:
            return
        # Several header rows (e.g. grouped columns) are merged into one so each chunk
        # can repeat a single header line.
        n_head = min(self._header_rows, len(rows) - 1) if len(rows) > 1 else 0
        if n_head:
            header = [" ".join(filter(None, col)) for col in zip(*rows[:n_head], strict=False)]
            body = rows[n_head:]
        else:
            header, body = [], rows
        self.blocks.append(Table(header=header, rows=body))


def _language(css_class: str) -> str:
    m = _LANG_CLASS.search(css_class)
    return m.group(1).lower() if m else ""


def parse_html(data: bytes) -> Document:
    parser = _Extractor()
    parser.feed(decode_text(data))
    parser.close()
    title = squash(parser.title)
    if not title:
        title = next((b.text for b in parser.blocks if isinstance(b, Heading)), "")
    date = next((d for k in _DATE_META if (d := to_iso_date(parser.meta.get(k)))), None)
    return Document(title=title, date=date, blocks=parser.blocks)
