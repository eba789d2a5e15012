"""Denied topics and content: keyword and regex rules, plus similarity to example phrases."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.guardrails.findings import Finding
from gateway.guardrails.settings import DeniedRule, DeniedTopic

DENIED = "DENIED"


class RuleMatcher:
    """Keywords (whole words, any case) and regexes, one compiled alternation per rule."""

    def __init__(self, rules: Sequence[DeniedRule]) -> None:
        self._compiled: list[tuple[str, re.Pattern[str]]] = []
        for rule in rules:
            parts = [r"(?<!\w)" + re.escape(k) + r"(?!\w)" for k in rule.keywords]
            parts += [f"(?:{p})" for p in rule.patterns]
            if parts:
                self._compiled.append((rule.name, re.compile("|".join(parts), re.IGNORECASE)))
        self.keywords = [k for rule in rules for k in rule.keywords]
        self.has_patterns = any(rule.patterns for rule in rules)

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def find(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        for name, pattern in self._compiled:
            for m in pattern.finditer(text):
                if m.end() > m.start():
                    found.append(Finding(DENIED, m.start(), m.end(), f"denied:{name}"))
        return found


@dataclass(frozen=True, slots=True)
class TopicMatch:
    topic: str
    rule: str  # "keyword", "pattern" or "semantic"
    start: int
    end: int
    score: float


class SemanticTopics:
    """Cosine similarity of a text's sentences to each topic's examples (embedded once, at build time)."""

    def __init__(self, topics: Sequence[DeniedTopic], embedder: object) -> None:
        self._embedder = embedder
        self._topics: list[tuple[str, float, np.ndarray]] = []
        for topic in topics:
            if topic.examples:
                vectors = embedder.embed(topic.examples)  # type: ignore[attr-defined]
                self._topics.append((topic.name, topic.threshold, np.asarray(vectors, dtype=np.float32)))

    def __bool__(self) -> bool:
        return bool(self._topics)

    async def match(self, segments: Sequence[tuple[int, int, str]]) -> list[TopicMatch]:
        if not self._topics or not segments:
            return []
        # The embedder is synchronous ONNX inference: keep it off the event loop.
        vectors = await asyncio.to_thread(self._embedder.embed, [s[2] for s in segments])  # type: ignore[attr-defined]
        vectors = np.asarray(vectors, dtype=np.float32)
        found: list[TopicMatch] = []
        for name, threshold, examples in self._topics:
            sims = vectors @ examples.T
            best = int(np.argmax(sims.max(axis=1)))
            score = float(sims[best].max())
            if score >= threshold:
                start, end, _ = segments[best]
                found.append(TopicMatch(name, "semantic", start, end, score))
        return found
