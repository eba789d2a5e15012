"""The guardrail checks of a request and of a completion, built once per tenant policy.

`InputGuard.inspect` validates and rewrites a request (raising GatewayError to block);
`OutputGuard` scans a JSON completion or builds the per-choice stream scanners. Decisions are
recorded with ctx.decide: stage, action, rule, entity type and span offsets, never the value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.guardrails.findings import Finding, resolve_overlaps
from gateway.guardrails.injection import InjectionDetector, sentences, strip_spans
from gateway.guardrails.ner import SpacyNer, load_ner
from gateway.guardrails.pii import scan_structured, scan_structured_sliced
from gateway.guardrails.redact import Redactor
from gateway.guardrails.settings import (
    NER_ENTITY_TYPES,
    InputGuardrailsPolicy,
    OutputGuardrailsPolicy,
    PiiSettings,
)
from gateway.guardrails.stream import StreamScanner
from gateway.guardrails.topics import DENIED, RuleMatcher, SemanticTopics
from gateway.protocols.model import Completion
from gateway.protocols.request import TextPart
from gateway.protocols.request import iter_text_parts as text_parts

INPUT_STAGE = "input_guardrails"
OUTPUT_STAGE = "output_guardrails"
MAX_DECISIONS = 50  # per request and stage; the rest are counted, not listed
CHARS_PER_TOKEN = 4.0
SLICED_SCAN_CHARS = 64_000  # above this, structured scanning takes ~10 ms: done in slices


def policy_violation(message: str) -> GatewayError:
    return GatewayError(400, message, type="invalid_request_error", code="content_policy_violation")


class PiiScanner:
    """Structured detectors (always) plus spaCy NER (when enabled) for the entity types with an action."""

    def __init__(self, settings: PiiSettings) -> None:
        self.actions: dict[str, str] = {e: a for e, a in settings.entities.items() if a != "off"}
        self.wanted = frozenset(self.actions)
        self.ner: SpacyNer | None = None
        if settings.ner.enabled and self.wanted & (NER_ENTITY_TYPES | {"STREET_ADDRESS"}):
            self.ner = load_ner(settings.ner.model, settings.ner.max_chars)

    def scan(self, text: str) -> list[Finding]:
        return scan_structured(text, self.wanted)

    async def scan_many(self, texts: Sequence[str]) -> list[list[Finding]]:
        if sum(map(len, texts)) > SLICED_SCAN_CHARS:
            # A long prompt or answer takes the regexes tens of milliseconds or more: scanned in
            # slices that give the loop back, so other requests keep moving.
            structured = [await scan_structured_sliced(t, self.wanted) for t in texts]
        else:
            structured = [self.scan(t) for t in texts]
        if self.ner is None or not texts:
            return structured
        ner = self.ner
        named = await asyncio.to_thread(lambda: [ner.find(t) for t in texts])
        return [
            [f for f in resolve_overlaps([*s, *n]) if f.entity in self.wanted]
            for s, n in zip(structured, named, strict=True)
        ]


def estimate_tokens(texts: Sequence[str], counter: Any | None) -> int:
    if counter is not None:
        return sum(counter.count_many(list(texts)))
    return sum(int(len(t) / CHARS_PER_TOKEN) + 1 for t in texts)


class Recorder:
    """ctx.decide with a cap, so a prompt with thousands of numbers cannot flood the request log."""

    def __init__(self, ctx: RequestContext, stage: str) -> None:
        self.ctx, self.stage, self.count = ctx, stage, 0

    def __call__(self, action: str, **detail: Any) -> None:
        self.count += 1
        if self.count <= MAX_DECISIONS:
            self.ctx.decide(self.stage, action, **detail)
        elif self.count == MAX_DECISIONS + 1:
            self.ctx.decide(self.stage, "truncated", reason=f"more than {MAX_DECISIONS} findings")


class InputGuard:
    def __init__(
        self,
        settings: InputGuardrailsPolicy,
        pii: PiiScanner,
        injection: InjectionDetector | None,
        rules: RuleMatcher,
        semantic: SemanticTopics | None,
        counter: Any | None = None,
    ) -> None:
        self.settings = settings
        self.pii = pii
        self.injection = injection
        self.rules = rules
        self.semantic = semantic
        self.counter = counter

    async def inspect(self, ctx: RequestContext) -> Redactor | None:
        """Check and rewrite the request; raises GatewayError to block. Returns the redaction mapping."""
        record = Recorder(ctx, INPUT_STAGE)
        messages = ctx.request.messages
        all_parts = list(text_parts(messages))
        limit = self.settings.max_input_tokens
        if limit is not None:
            tokens = estimate_tokens([p.text for p in all_parts], self.counter)
            if tokens > limit:
                record("block", rule="max_input_tokens", tokens=tokens, limit=limit)
                raise GatewayError(
                    400,
                    f"the prompt has about {tokens} tokens; this tenant allows at most {limit}",
                    code="context_length_exceeded",
                    param="messages",
                )
        replacements: dict[tuple[int, int | None], str] = {}
        if self.injection is not None:
            self._injection(messages, record, replacements)
        await self._topics(messages, record)
        redactor = await self._pii(messages, replacements, record)
        ctx.request.replace_texts(replacements)
        return redactor

    def _injection(
        self,
        messages: list[dict[str, Any]],
        record: Recorder,
        replacements: dict[tuple[int, int | None], str],
    ) -> None:
        assert self.injection is not None
        action = self.injection.settings.action
        for part in text_parts(messages, self.injection.settings.scan_roles):
            findings = self.injection.scan(part.text, part.message)
            for finding in findings:
                record(
                    action,
                    rule=finding.rule,
                    kind="prompt_injection",
                    message=part.message,
                    part=part.part,
                    start=finding.start,
                    end=finding.end,
                    score=round(finding.score, 3),
                )
            if not findings:
                continue
            if action == "block":
                raise policy_violation("the request was blocked: it looks like a prompt injection")
            if action == "strip":
                replacements[(part.message, part.part)] = strip_spans(part.text, findings)

    async def _topics(self, messages: list[dict[str, Any]], record: Recorder) -> None:
        settings = self.settings.denied_topics
        user_parts = list(text_parts(messages, ["user"]))
        matches: list[tuple[TextPart, str, str, int, int, float]] = []
        if self.rules:
            for part in user_parts:
                for f in self.rules.find(part.text):
                    matches.append((part, f.detector.removeprefix("denied:"), "lexical", f.start, f.end, 1.0))
        if self.semantic and user_parts and not matches:
            last = user_parts[-1]
            spans = sentences(last.text)[: settings.max_segments]
            segments = [(s, e, last.text[s:e]) for s, e in spans]
            if len(spans) > 1:
                segments.append((0, len(last.text), last.text))
            for m in await self.semantic.match(segments):
                matches.append((last, m.topic, "semantic", m.start, m.end, m.score))
        for part, topic, rule, start, end, score in matches:
            record(
                settings.action,
                rule=rule,
                kind="denied_topic",
                topic=topic,
                message=part.message,
                part=part.part,
                start=start,
                end=end,
                score=round(score, 3),
            )
        if matches and settings.action == "block":
            raise policy_violation(f"the request was blocked: it touches the denied topic '{matches[0][1]}'")

    async def _pii(
        self,
        messages: list[dict[str, Any]],
        replacements: dict[tuple[int, int | None], str],
        record: Recorder,
    ) -> Redactor | None:
        if not self.pii.wanted:
            return None
        parts = list(text_parts(messages, self.settings.pii.scan_roles))
        texts = [replacements.get((p.message, p.part), p.text) for p in parts]
        found = await self.pii.scan_many(texts)
        redactor = Redactor()
        blocked: str | None = None
        for part, text, findings in zip(parts, texts, found, strict=True):
            to_redact: list[Finding] = []
            for finding in findings:
                action = self.pii.actions[finding.entity]
                record(
                    action, kind="personal_data", message=part.message, part=part.part, **finding.describe()
                )
                if action == "block" and blocked is None:
                    blocked = finding.entity
                elif action == "redact":
                    to_redact.append(finding)
            if to_redact:
                replacements[(part.message, part.part)] = redactor.apply(text, to_redact)
        if blocked is not None:
            raise policy_violation(
                f"the request was blocked: it contains personal data or a secret ({blocked})"
            )
        return redactor if redactor else None


def output_replacement(finding: Finding) -> str:
    # Not the <TYPE_n> form: those are the caller's own placeholders, which the input stage restores.
    kind = finding.detector.removeprefix("denied:") if finding.entity == DENIED else finding.entity
    return f"[REDACTED:{kind}]"


class OutputGuard:
    def __init__(self, settings: OutputGuardrailsPolicy, pii: PiiScanner, rules: RuleMatcher) -> None:
        self.settings = settings
        self.pii = pii
        self.rules = rules
        self.actions = {**pii.actions, DENIED: settings.denied_action}

    def detect(self, text: str) -> list[Finding]:
        """Structured personal data and denied content (the streaming path: no NER)."""
        found = self.pii.scan(text)
        if self.rules:
            found = resolve_overlaps([*found, *self.rules.find(text)])
        return found

    def scanner(self) -> StreamScanner:
        return StreamScanner(
            self.detect,
            self.actions,
            output_replacement,
            self.settings.stream_holdback_chars,
            keywords=self.rules.keywords,
            has_patterns=self.rules.has_patterns,
        )

    async def check_completion(self, completion: Completion, record: Recorder) -> bool:
        """Redact findings in place, or cut a choice to finish_reason content_filter.

        True when anything changed."""
        texts = [(c, c.text) for c in completion.choices if c.text]
        if not texts:
            return False
        found = await self.pii.scan_many([t for _, t in texts])
        changed = False
        for (choice, text), findings in zip(texts, found, strict=True):
            if self.rules:
                findings = resolve_overlaps([*findings, *self.rules.find(text)])
            to_redact: list[Finding] = []
            blocked = False
            for finding in findings:
                action = self.actions.get(finding.entity, "log")
                record(action, kind=_kind(finding), choice=choice.index, **finding.describe())
                if action == "block":
                    blocked = True
                elif action == "redact":
                    to_redact.append(finding)
            if blocked:
                choice.text = ""
                choice.tool_calls = []
                choice.finish_reason = "content_filter"
                changed = True
            elif to_redact:
                choice.text = _apply(text, to_redact)
                changed = True
        return changed


def _kind(finding: Finding) -> str:
    return "denied_content" if finding.entity == DENIED else "personal_data"


def _apply(text: str, findings: Sequence[Finding]) -> str:
    parts, cursor = [], 0
    for f in findings:
        parts.append(text[cursor : f.start])
        parts.append(output_replacement(f))
        cursor = f.end
    parts.append(text[cursor:])
    return "".join(parts)
