"""Plain text: blank-line separated paragraphs, with underlined (setext/reST) headings."""

from __future__ import annotations

import re

from .blocks import Block, Document, Heading, Paragraph
from .textutil import clean_inline, decode_text, squash

_UNDERLINE = re.compile(r"^\s*([=\-~^*#])\1{2,}\s*$")
_UNDERLINE_LEVELS = {"=": 1, "#": 1, "-": 2, "~": 3, "^": 3, "*": 3}


def parse_plaintext(data: bytes) -> Document:
    text = decode_text(data).replace("\r\n", "\n").replace("\r", "\n")
    blocks: list[Block] = []
    for chunk in re.split(r"\n\s*\n", text):
        lines = [line for line in chunk.split("\n") if line.strip()]
        # A short line followed by a line of ===/--- is a heading in reST and setext style.
        while len(lines) >= 2 and _UNDERLINE.match(lines[1]) and len(lines[0].strip()) <= 120:
            blocks.append(Heading(level=_UNDERLINE_LEVELS[lines[1].strip()[0]], text=squash(lines[0])))
            lines = lines[2:]
        body = clean_inline("\n".join(line for line in lines if not _UNDERLINE.match(line)))
        if body:
            blocks.append(Paragraph(_unwrap(body)))
    title = next((b.text for b in blocks if isinstance(b, Heading)), "")
    return Document(title=title, blocks=blocks)


def _unwrap(text: str) -> str:
    """Join hard-wrapped lines into flowing prose, but keep list-like lines separate."""
    out: list[str] = []
    for line in text.split("\n"):
        if out and not re.match(r"^([-*•]|\d+[.)])\s", line):
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out)
