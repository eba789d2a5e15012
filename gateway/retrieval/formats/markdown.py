"""Markdown (CommonMark + pipe tables) with optional YAML front matter."""

from __future__ import annotations

import re
from collections.abc import Sequence

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from .blocks import Block, Code, Document, Heading, Paragraph, Table
from .dates import to_iso_date
from .textutil import decode_text, squash

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]+>")
_md = MarkdownIt("commonmark").enable("table")


def parse_markdown(data: bytes) -> Document:
    text = decode_text(data)
    meta, body = _split_front_matter(text)
    doc = Document(
        title=_meta_str(meta, "title"),
        date=to_iso_date(meta.get("date") or meta.get("updated") or meta.get("last_updated")),
        version=_meta_str(meta, "version") or None,
    )
    doc.blocks = _blocks(_md.parse(body))
    if not doc.title:
        doc.title = next((b.text for b in doc.blocks if isinstance(b, Heading) and b.level == 1), "")
    return doc


def _split_front_matter(text: str) -> tuple[dict[str, object], str]:
    m = _FRONT_MATTER.match(text)
    if m is None:
        return {}, text
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        # Broken front matter is still front matter: drop it rather than index YAML noise.
        meta = None
    return (meta if isinstance(meta, dict) else {}), text[m.end() :]


def _meta_str(meta: dict[str, object], key: str) -> str:
    value = meta.get(key)
    return squash(str(value)) if value is not None else ""


def _inline_text(token: Token) -> str:
    """Plain text of an inline token: emphasis markers and link targets dropped."""
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image":
            parts.append(child.content)  # alt text
        elif child.type == "html_inline":
            continue
    return "".join(parts).strip()


def _blocks(tokens: Sequence[Token]) -> list[Block]:
    blocks: list[Block] = []
    list_lines: list[str] = []  # a whole list becomes one paragraph, one item per line
    list_stack: list[int] = []  # per open list: next ordinal, or 0 for bullets
    item_prefix: str | None = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == "heading_open":
            blocks.append(Heading(level=int(tok.tag[1]), text=squash(_inline_text(tokens[i + 1]))))
            i += 3
            continue
        if tok.type in ("bullet_list_open", "ordered_list_open"):
            start = tok.attrGet("start")
            list_stack.append(int(start) if start else 1 if tok.type == "ordered_list_open" else 0)
        elif tok.type in ("bullet_list_close", "ordered_list_close"):
            list_stack.pop()
            if not list_stack and list_lines:
                blocks.append(Paragraph("\n".join(list_lines)))
                list_lines = []
        elif tok.type == "list_item_open":
            indent = "  " * (len(list_stack) - 1)
            if list_stack[-1]:
                item_prefix = f"{indent}{list_stack[-1]}. "
                list_stack[-1] += 1
            else:
                item_prefix = f"{indent}- "
        elif tok.type == "inline" and tokens[i - 1].type == "paragraph_open":
            text = _inline_text(tok)
            if list_stack:
                indent = "  " * len(list_stack)
                prefix = item_prefix if item_prefix is not None else indent
                list_lines.append(prefix + text.replace("\n", " "))
                item_prefix = None
            elif text:
                blocks.append(Paragraph(text))
        elif tok.type in ("fence", "code_block"):
            code = Code(text=tok.content.rstrip("\n"), language=tok.info.split()[0] if tok.info else "")
            if list_stack:
                # Code inside a list item: close the list so far to keep document order.
                if list_lines:
                    blocks.append(Paragraph("\n".join(list_lines)))
                    list_lines = []
            blocks.append(code)
        elif tok.type == "table_open":
            table, i = _table(tokens, i)
            blocks.append(table)
            continue
        elif tok.type == "html_block":
            text = squash(_HTML_TAG.sub(" ", tok.content))
            if text:
                blocks.append(Paragraph(text))
        i += 1
    if list_lines:
        blocks.append(Paragraph("\n".join(list_lines)))
    return blocks


def _table(tokens: Sequence[Token], i: int) -> tuple[Table, int]:
    header: list[str] = []
    rows: list[list[str]] = []
    row: list[str] = []
    while tokens[i].type != "table_close":
        tok = tokens[i]
        if tok.type == "tr_open":
            row = []
        elif tok.type == "inline":
            row.append(squash(_inline_text(tok)))
        elif tok.type == "tr_close":
            if not header and tokens[i - 1].type == "th_close":
                header = row
            else:
                rows.append(row)
        i += 1
    return Table(header=header, rows=rows), i + 1
