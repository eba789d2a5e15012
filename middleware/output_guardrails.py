"""output_guardrails: personal data and denied content in completions, JSON or streamed.

JSON: findings are redacted ([REDACTED:EMAIL]) or the choice is cut to an empty message with
finish_reason `content_filter`. Streams: each choice's text goes through a StreamScanner, which holds
back at most `stream_holdback_chars`; a block ends the stream with finish reason `content_filter`
and closes the upstream stream. NER (if enabled) runs on JSON completions only.
"""

from __future__ import annotations

import logging

from gateway.chain import Handler
from gateway.context import RequestContext
from gateway.guardrails.engine import OUTPUT_STAGE, OutputGuard, PiiScanner, Recorder, _kind
from gateway.guardrails.settings import OutputGuardrailsPolicy
from gateway.guardrails.stream import Step, StreamScanner
from gateway.guardrails.topics import RuleMatcher
from gateway.policy import Policy
from gateway.protocols.model import ChoiceEnd, Events, TextDelta
from gateway.response import GatewayResponse
from gateway.services import Services
from middleware.input_guardrails import unavailable

NAME = OUTPUT_STAGE
FEED_SLICE_CHARS = 4096  # scanning this much takes well under a millisecond
log = logging.getLogger("rag_gateway.guardrails")


class Blocked(Exception):
    """A stream choice hit a block rule."""


class OutputGuardrailsStage:
    name = NAME

    def __init__(self, settings: OutputGuardrailsPolicy, guard: OutputGuard) -> None:
        self.settings = settings
        self.guard = guard

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        response = await call_next(ctx)
        if response.status != 200:
            return response
        if response.is_stream:
            response.map_events(lambda events: self.guard_stream(ctx, events))
            return response
        record = Recorder(ctx, NAME)
        completion = response.completion()
        try:
            changed = await self.guard.check_completion(completion, record)
        except Exception as exc:  # never a 500: follow on_error
            log.exception("output guardrails failed for request %s", ctx.request_id)
            ctx.decide(NAME, "error", on_error=self.settings.on_error, error=type(exc).__name__)
            if self.settings.on_error == "fail_closed":
                raise unavailable(NAME) from exc
            return response
        if changed:
            if any(c.finish_reason == "content_filter" for c in completion.choices):
                ctx.response_headers["x-gateway-guardrail"] = "content_filter"
            response.set_completion(completion)
        return response

    async def guard_stream(self, ctx: RequestContext, events: Events) -> Events:
        record = Recorder(ctx, NAME)
        scanners: dict[int, StreamScanner] = {}
        unchecked = False  # fail_open after an engine error: relay the rest as it comes
        async for event in events:
            if unchecked or not isinstance(event, TextDelta | ChoiceEnd):
                yield event
                continue
            try:
                scanner = scanners.get(event.choice)
                if scanner is None:
                    scanner = scanners[event.choice] = self.guard.scanner()
                if isinstance(event, TextDelta):
                    # A huge delta is scanned a slice at a time, each released as its own event, so
                    # the edge can give the loop back between slices (the scanner keeps a match that
                    # spans two slices, as it does across deltas).
                    for start in range(0, len(event.text), FEED_SLICE_CHARS):
                        piece = event.text[start : start + FEED_SLICE_CHARS]
                        text = self._record(scanner.feed(piece), event.choice, record)
                        if text:
                            yield TextDelta(text, event.choice)
                    continue
                rest = self._record(scanner.flush(), event.choice, record)
            except Blocked:
                ctx.response_headers["x-gateway-guardrail"] = "content_filter"
                for index in sorted(scanners) or [0]:
                    yield ChoiceEnd("content_filter", index)
                return  # the upstream stream is closed with the response
            except Exception as exc:
                log.exception("output guardrails failed on a stream, request %s", ctx.request_id)
                ctx.decide(NAME, "error", on_error=self.settings.on_error, error=type(exc).__name__)
                if self.settings.on_error == "fail_closed":
                    raise unavailable(NAME) from exc
                unchecked = True
                # What was held back goes out unchecked, as the policy says.
                for index, held in scanners.items():
                    if held.pending:
                        yield TextDelta(held.pending, index)
                yield event
                continue
            if rest:
                yield TextDelta(rest, event.choice)
            yield event
        if not unchecked:
            for index, scanner in scanners.items():
                try:
                    rest = self._record(scanner.flush(), index, record)
                except Blocked:
                    ctx.response_headers["x-gateway-guardrail"] = "content_filter"
                    yield ChoiceEnd("content_filter", index)
                    return
                if rest:
                    yield TextDelta(rest, index)

    def _record(self, step: Step, index: int, record: Recorder) -> str:
        for finding, action in step.acted:
            record(action, kind=_kind(finding), choice=index, **finding.describe())
        if step.blocked is not None:
            raise Blocked
        return step.text


def build_guard(settings: OutputGuardrailsPolicy) -> OutputGuard:
    return OutputGuard(settings, PiiScanner(settings.pii), RuleMatcher(settings.denied))


def build(policy: Policy, services: Services) -> OutputGuardrailsStage | None:
    settings = policy.output_guardrails
    if not settings.enabled:
        return None
    return OutputGuardrailsStage(settings, build_guard(settings))
