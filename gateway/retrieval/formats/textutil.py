"""Small text helpers shared by the format parsers."""

from __future__ import annotations

import re

_WS = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")


def decode_text(data: bytes) -> str:
    """Decode bytes of unknown encoding: UTF-8 (with or without BOM), UTF-16 with BOM, else cp1252.

    cp1252 is the usual encoding of legacy Windows exports; latin-1 is the last resort
    because it can decode any byte sequence.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def looks_binary(data: bytes) -> bool:
    # NUL bytes essentially never occur in text files (UTF-16 is handled via its BOM first).
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return False
    return b"\x00" in data[:8192]


def clean_inline(text: str) -> str:
    """Collapse runs of spaces/tabs inside a line and trim; keeps newlines."""
    lines = (_WS.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def squash(text: str) -> str:
    """Everything on one line with single spaces (for headings and table cells)."""
    return " ".join(text.split())
