"""input_guardrails: personal data, prompt injection, denied topics and size limits on the request.

Runs before cache and retrieval. Redacted values become typed placeholders (<EMAIL_1>); with
`pii.restore_in_answer` the caller's own values are put back into the answer, JSON or stream,
whatever protocol it is encoded in. `ChunkScreen` (built from the same policy section) checks
retrieved chunks for indirect prompt injection; the retrieval stage receives it at build time.
An engine error follows `on_error`: fail_closed answers 503, fail_open forwards and records it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.chain import Handler
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.guardrails.engine import INPUT_STAGE, InputGuard, PiiScanner, Recorder
from gateway.guardrails.injection import InjectionDetector, InjectionFinding
from gateway.guardrails.redact import Redactor, StreamRestorer
from gateway.guardrails.settings import InputGuardrailsPolicy
from gateway.guardrails.topics import RuleMatcher, SemanticTopics
from gateway.policy import Policy
from gateway.protocols.model import ChoiceEnd, Completion, Event, Events, TextDelta, ToolArgumentsDelta
from gateway.response import GatewayResponse
from gateway.services import Services

NAME = INPUT_STAGE
log = logging.getLogger("rag_gateway.guardrails")


def unavailable(stage: str) -> GatewayError:
    return GatewayError(
        503,
        f"{stage.replace('_', ' ')} could not check this request, and the tenant's policy does not let "
        "unchecked requests through (on_error: fail_closed); retry later",
        type="api_error",
        code="guardrail_unavailable",
    )


class ChunkScreen:
    """Indirect prompt injection in retrieved chunks, with the policy's `chunk_action`."""

    def __init__(self, detector: InjectionDetector) -> None:
        self.detector = detector
        self.action = detector.settings.chunk_action

    def scan(self, ctx: RequestContext, texts: Sequence[str]) -> list[InjectionFinding]:
        """Findings (each `index` is the chunk's position in `texts`), recorded as decisions."""
        findings = self.detector.scan_many(texts)
        record = Recorder(ctx, NAME)
        for f in findings:
            record(
                self.action,
                kind="indirect_prompt_injection",
                chunk=f.index,
                rule=f.rule,
                start=f.start,
                end=f.end,
                score=round(f.score, 3),
            )
        return findings


def chunk_screen(policy: Policy) -> ChunkScreen | None:
    settings = policy.input_guardrails
    if not settings.enabled or not settings.injection.enabled:
        return None
    return ChunkScreen(InjectionDetector(settings.injection))


class InputGuardrailsStage:
    name = NAME

    def __init__(self, settings: InputGuardrailsPolicy, guard: InputGuard) -> None:
        self.settings = settings
        self.guard = guard

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        try:
            redactor = await self.guard.inspect(ctx)
        except GatewayError:
            raise
        except Exception as exc:  # an engine fault must follow the policy, never surface as a 500
            log.exception("input guardrails failed for request %s", ctx.request_id)
            ctx.decide(NAME, "error", on_error=self.settings.on_error, error=type(exc).__name__)
            if self.settings.on_error == "fail_closed":
                raise unavailable(NAME) from exc
            redactor = None
        response = await call_next(ctx)
        if redactor is None or not self.settings.pii.restore_in_answer or response.status != 200:
            return response
        ctx.decide(NAME, "restore", placeholders=len(redactor))
        if response.is_stream:
            response.map_events(lambda events: restore_stream(events, redactor))
        else:
            completion = response.completion()
            restore_completion(completion, redactor)
            response.set_completion(completion)
        return response


def restore_completion(completion: Completion, redactor: Redactor) -> None:
    for choice in completion.choices:
        if choice.text:
            choice.text = redactor.restore(choice.text)
        for call in choice.tool_calls:
            call.arguments = redactor.restore(call.arguments)


async def restore_stream(events: Events, redactor: Redactor) -> Events:
    """Placeholders back to values in text and tool arguments, even when one is split across events."""
    texts: dict[int, StreamRestorer] = {}
    arguments: dict[tuple[int, int], StreamRestorer] = {}

    def flush(choice: int | None = None) -> list[Event]:
        """What the restorers still hold (of one choice, or all), as events."""
        rest: list[Event] = []
        for index in [i for i in texts if choice is None or i == choice]:
            if text := texts.pop(index).flush():
                rest.append(TextDelta(text, index))
        for key in [k for k in arguments if choice is None or k[0] == choice]:
            if text := arguments.pop(key).flush():
                rest.append(ToolArgumentsDelta(key[1], text, key[0]))
        return rest

    async for event in events:
        if isinstance(event, TextDelta):
            restorer = texts.get(event.choice)
            if restorer is None:
                restorer = texts[event.choice] = StreamRestorer(redactor)
            text = restorer.feed(event.text)
            if text:
                yield TextDelta(text, event.choice, event.logprobs)
        elif isinstance(event, ToolArgumentsDelta):
            key = (event.choice, event.call)
            restorer = arguments.get(key)
            if restorer is None:
                restorer = arguments[key] = StreamRestorer(redactor)
            text = restorer.feed(event.arguments)
            if text:
                yield ToolArgumentsDelta(event.call, text, event.choice)
        elif isinstance(event, ChoiceEnd):
            for rest in flush(event.choice):
                yield rest
            yield event
        else:
            yield event
    for rest in flush():
        yield rest


def build_guard(settings: InputGuardrailsPolicy, services: Services | None) -> InputGuard:
    injection = InjectionDetector(settings.injection) if settings.injection.enabled else None
    topics = settings.denied_topics.topics
    semantic = None
    if any(t.examples for t in topics):
        embedder = services.embedders.loaded if services is not None else None
        if embedder is None:
            raise RuntimeError(
                "input_guardrails.denied_topics has example phrases but the gateway has no embedder; "
                "configure the local embedding model or use keywords/patterns only"
            )
        semantic = SemanticTopics(topics, embedder)  # example embeddings computed once, here
    counter = services.token_counter if services is not None else None
    return InputGuard(settings, PiiScanner(settings.pii), injection, RuleMatcher(topics), semantic, counter)


def build(policy: Policy, services: Services) -> InputGuardrailsStage | None:
    settings = policy.input_guardrails
    if not settings.enabled:
        return None
    return InputGuardrailsStage(settings, build_guard(settings, services))
