"""Typed placeholders (<EMAIL_1>) numbered per distinct value within one request, and their reversal."""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.guardrails.findings import Finding

PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*)_(\d{1,4})>")
# Longest possible placeholder ("<STREET_ADDRESS_9999>" is 21); a stream holds back at most this much.
MAX_PLACEHOLDER_CHARS = 24


class Redactor:
    """Owns the value <-> placeholder mapping of one request (in memory only, never logged)."""

    def __init__(self) -> None:
        self._placeholders: dict[tuple[str, str], str] = {}
        self._values: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        existing = self._placeholders.get(key)
        if existing is not None:
            return existing
        number = self._counts.get(entity, 0) + 1
        self._counts[entity] = number
        placeholder = f"<{entity}_{number}>"
        self._placeholders[key] = placeholder
        self._values[placeholder] = value
        return placeholder

    def apply(self, text: str, findings: Sequence[Finding]) -> str:
        """Replace each (non-overlapping, sorted) finding by its placeholder."""
        parts: list[str] = []
        cursor = 0
        for finding in findings:
            parts.append(text[cursor : finding.start])
            parts.append(self.placeholder(finding.entity, text[finding.start : finding.end]))
            cursor = finding.end
        parts.append(text[cursor:])
        return "".join(parts)

    def __len__(self) -> int:
        return len(self._values)

    def restore(self, text: str) -> str:
        if "<" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._values.get(m.group(0), m.group(0)), text)


class StreamRestorer:
    """Restores placeholders in streamed text, holding back only a trailing '<...' that may be one."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._pending = ""

    def feed(self, text: str) -> str:
        buffer = self._pending + text
        cut = buffer.rfind("<")
        if cut >= 0 and ">" not in buffer[cut:] and len(buffer) - cut < MAX_PLACEHOLDER_CHARS:
            if re.fullmatch(r"<[A-Z_]*\d*", buffer[cut:]):
                self._pending = buffer[cut:]
                return self._redactor.restore(buffer[:cut])
        self._pending = ""
        return self._redactor.restore(buffer)

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest
