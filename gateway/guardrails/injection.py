"""Prompt injection: phrase heuristics plus the linear classifier, per sentence and per text.

Scoring each sentence as well as the whole text matters for indirect injection: one planted
instruction in a long retrieved chunk barely moves a whole-text score but dominates its sentence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.guardrails.classifier import (
    MAX_TOKENS,
    LinearInjectionClassifier,
    default_classifier,
    features,
    features_of,
    tokens_of,
)
from gateway.guardrails.settings import InjectionSettings

_I = re.IGNORECASE
HEURISTICS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "ignore_instructions",
        re.compile(
            r"\b(?:ignore|disregard|forget|override|bypass|skip|drop|abandon)\s+(?:all\s+|any\s+|the\s+|your\s+|"
            r"every\s+|of\s+)*(?:previous|prior|above|earlier|preceding|original|initial|system|existing|former|"
            r"current)?\s*(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|"
            r"context|constraints|programming|restrictions)\b",
            _I,
        ),
    ),
    (
        "new_instructions",
        re.compile(
            r"(?:^|\n|\.\s)\s*(?:new|updated|real|actual|revised)\s+(?:system\s+)?instructions?\s*:", _I
        ),
    ),
    (
        "reveal_prompt",
        re.compile(
            r"\b(?:reveal|print|show|repeat|output|leak|disclose|display|tell me|give me|spell out|dump)\s+"
            r"(?:me\s+)?(?:your|the|all|its)\s+(?:\w+\s+){0,2}?(?:system|initial|hidden|secret|original|"
            r"internal)\s+(?:prompt|instructions?|message|rules|configuration)",
            _I,
        ),
    ),
    (
        "role_override",
        re.compile(
            r"\b(?:you\s+are\s+now|from\s+now\s+on,?\s+you\s+(?:are|will|must)|act\s+as\s+(?:an?\s+)?"
            r"(?:unrestricted|unfiltered|uncensored|jailbroken|evil))\b",
            _I,
        ),
    ),
    (
        "jailbreak_persona",
        re.compile(
            r"\b(?:DAN|do\s+anything\s+now|developer\s+mode\s+(?:enabled|on|activated)|jailbr(?:oken|eak)\s+mode|"
            r"no\s+(?:ethical|moral)\s+(?:guidelines|restrictions|constraints))\b",
            _I,
        ),
    ),
    (
        "chat_markup",
        re.compile(
            r"<\|im_start\|>|<\|system\|>|\[/?INST\]|<<SYS>>|^\s*#{2,}\s*(?:system|instruction)s?\b",
            _I | re.M,
        ),
    ),
    (
        "addressed_to_model",
        re.compile(
            r"\b(?:if\s+you\s+are\s+(?:an?\s+)?(?:AI|LLM|language\s+model|assistant|chatbot)|"
            r"(?:AI|LLM|assistant|model|chatbot)s?\s+(?:reading|processing|summari[sz]ing)\s+this|"
            r"note\s+to\s+(?:the\s+)?(?:AI|LLM|assistant|model))\b",
            _I,
        ),
    ),
    (
        "hide_from_user",
        re.compile(
            r"\b(?:do\s+not|don'?t|never)\s+(?:tell|inform|mention\s+(?:this\s+)?to|reveal\s+(?:this\s+)?to|"
            r"let)\s+the\s+user\b",
            _I,
        ),
    ),
    (
        "exfiltration",
        re.compile(
            r"!\[[^\]]*\]\(https?://[^)\s]*[?&][a-z_]*=|\b(?:send|forward|post|upload|exfiltrate)\s+(?:the\s+|all\s+|"
            r"this\s+)?(?:conversation|chat\s+history|user'?s?\s+data|credentials|api\s+keys?|previous\s+messages)\s+"
            r"to\b",
            _I,
        ),
    ),
)

# A sentence ends at [.!?] followed by a space or the end, so "p < 0.05" or "S. cerevisiae" stay whole.
# Cheap substring tests (on the lower-cased text) that must pass before a heuristic regex runs.
HINTS: dict[str, tuple[str, ...]] = {
    "ignore_instructions": ("ignore", "disregard", "forget", "override", "bypass", "skip", "drop", "abandon"),
    "new_instructions": ("instruction",),
    "reveal_prompt": ("prompt", "instruction", "message", "rules", "configuration"),
    "role_override": ("you are now", "from now on", "act as"),
    "jailbreak_persona": ("dan", "anything now", "developer mode", "jailbr", "no ethical", "no moral"),
    "chat_markup": ("<|", "[inst", "[/inst", "<<sys", "##"),
    "addressed_to_model": ("ai", "llm", "model", "assistant", "chatbot"),
    "hide_from_user": ("the user",),
    "exfiltration": ("](http", "send", "forward", "post", "upload", "exfiltrate"),
}
GATED_HEURISTICS = tuple((name, pattern, HINTS[name]) for name, pattern in HEURISTICS)
# Runs of ordinary characters are taken whole ([^.!?\n]+), not one alternation per character: the
# same sentences, ~7x faster.
SENTENCE = re.compile(r"(?:[^.!?\n]+|[.!?](?!\s|$))+(?:[.!?]+|\n|$)")
MIN_SENTENCE_WORDS = 4


@dataclass(frozen=True, slots=True)
class InjectionFinding:
    """One suspected injection: in which text (index), where, by which rule, how sure."""

    index: int
    rule: str  # "heuristic:<name>" or "classifier"
    start: int
    end: int
    score: float

    def describe(self) -> dict[str, object]:
        return {
            "index": self.index,
            "rule": self.rule,
            "start": self.start,
            "end": self.end,
            "score": round(self.score, 3),
        }


def sentences(text: str) -> list[tuple[int, int]]:
    spans = [(m.start(), m.end()) for m in SENTENCE.finditer(text) if m.group().strip()]
    return spans or [(0, len(text))]


class InjectionDetector:
    def __init__(
        self, settings: InjectionSettings, classifier: LinearInjectionClassifier | None = None
    ) -> None:
        self.settings = settings
        self.classifier = (
            classifier if classifier is not None else (default_classifier() if settings.classifier else None)
        )

    def scan(self, text: str, index: int = 0) -> list[InjectionFinding]:
        found: list[InjectionFinding] = []
        lowered = text.lower()
        for name, pattern, hints in GATED_HEURISTICS:
            for hint in hints:  # a plain loop: any() over a generator costs a frame per heuristic
                if hint in lowered:
                    break
            else:
                continue
            for m in pattern.finditer(text):
                found.append(InjectionFinding(index, f"heuristic:{name}", m.start(), m.end(), 1.0))
        if self.classifier is None:
            return found
        classifier, threshold = self.classifier, self.settings.threshold
        spans = sentences(text)
        flagged = False
        # Each sentence's tokens once: its own score, and (joined) the whole text's features.
        pieces: list[list[str]] = []
        for start, end in spans:
            sentence = text[start:end]
            tokens = tokens_of(sentence)
            pieces.append(tokens)
            if len(sentence.split()) < MIN_SENTENCE_WORDS:
                continue  # too short to judge; "Ignore it." alone is not an attack
            p = classifier.score(features_of(tokens))
            if p >= threshold:
                flagged = True
                found.append(InjectionFinding(index, "classifier", start, end, p))
        if not flagged and len(spans) > 1:
            p = classifier.score(self._whole_text_features(text, pieces))
            if p >= threshold:
                found.append(InjectionFinding(index, "classifier", 0, len(text), p))
        return found

    @staticmethod
    def _whole_text_features(text: str, pieces: list[list[str]]) -> set[str]:
        """`features(text)` from the sentences' tokens: no token crosses a sentence boundary and
        none lies outside the sentences, so their concatenation is the text's token list. Unless
        lower-casing changes the text's length (a few Unicode letters), or the text is past the
        token cap: then it is tokenised afresh."""
        joined = [token for tokens in pieces for token in tokens]
        if len(joined) >= MAX_TOKENS or len(text.lower()) != len(text):
            return features(text)
        return features_of(joined)

    def scan_many(self, texts: Sequence[str]) -> list[InjectionFinding]:
        found: list[InjectionFinding] = []
        for index, text in enumerate(texts):
            found.extend(self.scan(text, index))
        return found


def strip_spans(text: str, findings: Sequence[InjectionFinding]) -> str:
    """The text without the sentences that hold a finding (the rest of the message still goes through)."""
    drop: list[tuple[int, int]] = []
    spans = sentences(text)
    for finding in findings:
        for start, end in spans:
            if start < finding.end and finding.start < end:
                drop.append((start, end))
    if not drop:
        return text
    kept, cursor = [], 0
    for start, end in sorted(set(drop)):
        if start >= cursor:
            kept.append(text[cursor:start])
        cursor = max(cursor, end)
    kept.append(text[cursor:])
    return "".join(kept).strip()


_DEFAULT: InjectionDetector | None = None


def scan_chunks(texts: Sequence[str], settings: InjectionSettings | None = None) -> list[InjectionFinding]:
    """Indirect injection check for retrieved chunks, before they are injected into the prompt.

    Each finding's `index` is the position of the chunk in `texts`; what to do with a flagged chunk
    is the policy's `injection.chunk_action` (strip: leave the chunk out; block; flag: keep it).
    """
    global _DEFAULT
    if settings is not None:
        return InjectionDetector(settings).scan_many(texts)
    if _DEFAULT is None:
        _DEFAULT = InjectionDetector(InjectionSettings())
    return _DEFAULT.scan_many(texts)
