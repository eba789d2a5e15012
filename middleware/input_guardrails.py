"""input_guardrails: personal data, prompt injection, denied topics and size limits on the request.

Runs before cache and retrieval. Redacted values become typed placeholders (<EMAIL_1>); with
`pii.restore_in_answer` the caller's own values are put back into the completion, JSON or stream.
The stage also offers `scan_chunks` for the retrieval stage (indirect injection in retrieved text):
it is reachable as `ctx.state["input_guardrails"].scan_chunks(ctx, texts)`.
An engine error follows `on_error`: fail_closed answers 503, fail_open forwards and records it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from gateway.chain import Handler
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.guardrails.engine import INPUT_STAGE, InputGuard, PiiScanner, Recorder
from gateway.guardrails.injection import InjectionDetector, InjectionFinding
from gateway.guardrails.redact import Redactor, StreamRestorer
from gateway.guardrails.settings import InputGuardrailsPolicy
from gateway.guardrails.topics import RuleMatcher, SemanticTopics
from gateway.policy import Policy
from gateway.response import GatewayResponse
from gateway.services import Services
from gateway.sse import encode_event, event_data, iter_events

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


class InputGuardrailsStage:
    name = NAME

    def __init__(self, settings: InputGuardrailsPolicy, guard: InputGuard) -> None:
        self.settings = settings
        self.guard = guard

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        ctx.state[NAME] = self
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
        if response.stream is not None:
            response.stream = restore_stream(response.stream, redactor)
        else:
            response.set_json(restore_completion(response.json(), redactor))
        return response

    def scan_chunks(self, ctx: RequestContext, texts: Sequence[str]) -> list[InjectionFinding]:
        """Indirect prompt injection in retrieved chunks; the caller applies `chunk_action`.

        Each finding's `index` is the chunk's position in `texts`. Decisions are recorded here.
        """
        detector = self.guard.injection
        if detector is None:
            return []
        findings = detector.scan_many(texts)
        record = Recorder(ctx, NAME)
        for f in findings:
            record(
                detector.settings.chunk_action,
                kind="indirect_prompt_injection",
                chunk=f.index,
                rule=f.rule,
                start=f.start,
                end=f.end,
                score=round(f.score, 3),
            )
        return findings


def restore_completion(data: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list):
        return data
    restored = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            restored.append(choice)
            continue
        message = dict(message)
        if isinstance(message.get("content"), str):
            message["content"] = redactor.restore(message["content"])
        if isinstance(message.get("tool_calls"), list):
            message["tool_calls"] = [_restore_call(call, redactor) for call in message["tool_calls"]]
        restored.append({**choice, "message": message})
    return {**data, "choices": restored}


def _restore_call(call: Any, redactor: Redactor) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        return {**call, "function": {**function, "arguments": redactor.restore(function["arguments"])}}
    return call


async def restore_stream(stream: AsyncIterator[bytes], redactor: Redactor) -> AsyncIterator[bytes]:
    """Placeholders back to values in delta content, even when one is split across chunks."""
    restorers: dict[int, StreamRestorer] = {}
    header: dict[str, Any] = {}
    async for event in iter_events(stream):
        payload = event_data(event)
        if payload is None:
            yield event
            continue
        if payload == b"[DONE]":
            for index, restorer in restorers.items():
                rest = restorer.flush()
                if rest:
                    yield encode_event(_content_chunk(header, index, rest))
            restorers.clear()
            yield event
            continue
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            yield event
            continue
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
            yield event
            continue
        if not header:
            header = {k: chunk[k] for k in ("id", "created", "model") if k in chunk}
        choices = []
        for choice in chunk["choices"]:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            index = choice.get("index", 0)
            if isinstance(content, str) or choice.get("finish_reason") is not None:
                restorer = restorers.setdefault(index, StreamRestorer(redactor))
                text = restorer.feed(content) if isinstance(content, str) else ""
                if choice.get("finish_reason") is not None:
                    text += restorer.flush()
                if isinstance(content, str) or text:
                    choice = {**choice, "delta": {**delta, "content": text}}
            choices.append(choice)
        yield encode_event({**chunk, "choices": choices})


def _content_chunk(header: dict[str, Any], index: int, text: str) -> dict[str, Any]:
    return {
        **header,
        "object": "chat.completion.chunk",
        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}],
    }


def settings_of(policy: Policy) -> InputGuardrailsPolicy:
    settings = getattr(policy, "input_guardrails", None)
    if settings is None:
        raise RuntimeError("the tenant Policy has no `input_guardrails` field yet (gateway/policy.py)")
    return settings


def build_guard(settings: InputGuardrailsPolicy, services: Services | None) -> InputGuard:
    injection = InjectionDetector(settings.injection) if settings.injection.enabled else None
    topics = settings.denied_topics.topics
    semantic = None
    if any(t.examples for t in topics):
        embedder = services.embedder if services is not None else None
        if embedder is None:
            raise RuntimeError(
                "input_guardrails.denied_topics has example phrases but the gateway has no embedder; "
                "configure the local embedding model or use keywords/patterns only"
            )
        semantic = SemanticTopics(topics, embedder)  # example embeddings computed once, here
    counter = services.extras.get("token_counter") if services is not None else None
    return InputGuard(settings, PiiScanner(settings.pii), injection, RuleMatcher(topics), semantic, counter)


def build(policy: Policy, services: Services) -> InputGuardrailsStage | None:
    settings = settings_of(policy)
    if not settings.enabled:
        return None
    return InputGuardrailsStage(settings, build_guard(settings, services))
