"""What a detector reports: a typed span of the scanned text, never the matched value itself."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# When two detectors claim overlapping text, the more specific one wins (a card number is also a
# run of digits a phone detector might take; a secret beats an e-mail inside a connection string).
PRIORITY: dict[str, int] = {
    "SECRET": 100,
    # An IBAN's mod-97 check is 10x stronger than Luhn, and an IBAN often holds a Luhn-valid digit run.
    "IBAN": 95,
    "CREDIT_CARD": 90,
    "US_SSN": 80,
    "EMAIL": 70,
    "IP_ADDRESS": 60,
    "PHONE": 50,
    "STREET_ADDRESS": 40,
    "PERSON": 30,
    "LOCATION": 20,
}


@dataclass(frozen=True, slots=True)
class Finding:
    entity: str  # EMAIL, PHONE, SECRET, ...
    start: int
    end: int
    detector: str  # which rule found it, e.g. "email", "secret:aws_access_key", "ner:spacy"
    score: float = 1.0

    @property
    def length(self) -> int:
        return self.end - self.start

    def overlaps(self, other: Finding) -> bool:
        return self.start < other.end and other.start < self.end

    def describe(self) -> dict[str, object]:
        """Loggable detail: type, rule and offsets, never the value."""
        return {"entity": self.entity, "detector": self.detector, "start": self.start, "end": self.end}


def resolve_overlaps(findings: Iterable[Finding]) -> list[Finding]:
    """Non-overlapping findings in text order, keeping the higher-priority (then longer) one."""
    ranked = sorted(findings, key=lambda f: (-PRIORITY.get(f.entity, 0), -f.length, f.start))
    kept: list[Finding] = []
    for finding in ranked:
        if not any(finding.overlaps(k) for k in kept):
            kept.append(finding)
    return sorted(kept, key=lambda f: f.start)
