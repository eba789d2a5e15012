"""Scanning streamed text so that nothing matching a rule reaches the client.

Text is released as soon as it cannot be part of a match: the scanner holds back only a tail that
might still grow into one (a digit run, the last word, a capitalised street name after a house
number, the start of a denied keyword) and never more than `holdback` characters. A finding that is
followed by other text is complete and acted on; one that touches the end of the buffer waits,
unless waiting would exceed the holdback, in which case it is acted on as it stands (a key long
enough to match is already a key). A redacted value that keeps growing is swallowed until it ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.guardrails.findings import Finding

# Tails of text that may be the beginning of an entity, matched at the end of the buffer.
TAIL = re.compile(
    r"(?:\d{1,6}[A-Za-z]?(?:[ \t]+[A-Z][\w'.-]*){0,5}[ \t,]*"  # house number + street words
    r"|[+(]?\d[\d \t().\-/]*"  # phones, cards, SSNs, IPv4
    r"|[A-Z]{2}\d{2}[A-Z0-9 ]*"  # spaced IBANs
    r"|-----BEGIN[^\n]*(?:\n[A-Za-z0-9+/=]*)*"  # a PEM block under way
    r"|(?:[A-ZÄÖÜ][\wäöüß-]*[ \t]+)?\S*"  # the last word (e-mails, keys), after a capitalised word
    r")$"
)

Detect = Callable[[str], list[Finding]]


@dataclass(slots=True)
class Step:
    text: str  # what may be sent now
    acted: list[tuple[Finding, str]] = field(default_factory=list)  # (finding at absolute offsets, action)
    blocked: Finding | None = None


class StreamScanner:
    """One per choice of a streamed completion."""

    def __init__(
        self,
        detect: Detect,
        actions: dict[str, str],
        replacement: Callable[[Finding], str],
        holdback: int,
        keywords: Sequence[str] = (),
        has_patterns: bool = False,
    ) -> None:
        self._detect = detect
        self._actions = actions
        self._replacement = replacement
        self.holdback = holdback
        self._keywords = [k.lower() for k in keywords]
        # Arbitrary regular expressions have no knowable prefix: hold the full window for them.
        self._fixed_window = has_patterns
        self.pending = ""
        self.consumed = 0  # characters of the original text before `pending`
        self._open: tuple[str, str] | None = None  # (entity, text so far) of a redacted value still growing

    def _hold_start(self, buf: str) -> int:
        if self._fixed_window:
            return 0
        start = len(buf)
        m = TAIL.search(buf)
        if m is not None and m.group():
            start = m.start()
        lowered = buf[-64:].lower()
        offset = len(buf) - len(lowered)
        for keyword in self._keywords:
            for k in range(min(len(keyword) - 1, len(lowered)), 0, -1):
                if lowered.endswith(keyword[:k]):
                    start = min(start, offset + len(lowered) - k)
                    break
        return start

    def _continue_open(self, buf: str) -> str:
        """Swallow the part of `buf` that continues an open redacted value; returns the rest."""
        assert self._open is not None
        entity, seen = self._open
        joined = seen + buf
        grown = [f for f in self._detect(joined) if f.entity == entity and f.start == 0]
        if grown and grown[0].end > len(seen):
            end = grown[0].end
            if end >= len(joined):
                self._open = (entity, joined)
                self.consumed += len(buf)
                return ""
            self.consumed += end - len(seen)
            buf = joined[end:]
        self._open = None
        return buf

    def feed(self, text: str, final: bool = False) -> Step:
        buf = self.pending + text
        if self._open is not None:
            buf = self._continue_open(buf)
        step = Step("")
        out: list[str] = []
        cursor = 0
        deferred_at = len(buf)
        for finding in self._detect(buf):
            action = self._actions.get(finding.entity, "log")
            touches_end = finding.end >= len(buf) and not final
            if touches_end and len(buf) - finding.start <= self.holdback:
                deferred_at = finding.start  # may still grow; decide when it is complete
                break
            absolute = Finding(
                finding.entity,
                self.consumed + finding.start,
                self.consumed + finding.end,
                finding.detector,
                finding.score,
            )
            step.acted.append((absolute, action))
            if action == "block":
                step.blocked = absolute
                self.pending = ""
                return step
            out.append(buf[cursor : finding.start])
            if action == "redact":
                out.append(self._replacement(finding))
                if touches_end:
                    self._open = (finding.entity, buf[finding.start : finding.end])
            else:
                out.append(buf[finding.start : finding.end])
            cursor = finding.end
        if final:
            release = len(buf)
        else:
            release = min(deferred_at, self._hold_start(buf))
            release = max(cursor, release, len(buf) - self.holdback)
        out.append(buf[cursor:release])
        self.consumed += release
        self.pending = buf[release:]
        step.text = "".join(out)
        return step

    def flush(self) -> Step:
        return self.feed("", final=True)
