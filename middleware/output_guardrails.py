"""output_guardrails: personal data and denied content in completions, JSON or streamed.

JSON: findings are redacted ([REDACTED:EMAIL]) or the choice is cut to an empty message with
finish_reason `content_filter`. Streams: each choice's text goes through a StreamScanner, which holds
back at most `stream_holdback_chars`; a block ends the stream with a `content_filter` chunk and
[DONE], and the upstream stream is closed. NER (if enabled) runs on JSON completions only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.chain import Handler
from gateway.context import RequestContext
from gateway.guardrails.engine import OUTPUT_STAGE, OutputGuard, PiiScanner, Recorder, _kind
from gateway.guardrails.settings import OutputGuardrailsPolicy
from gateway.guardrails.stream import Step, StreamScanner
from gateway.guardrails.topics import RuleMatcher
from gateway.policy import Policy
from gateway.response import GatewayResponse
from gateway.services import Services
from gateway.sse import DONE_EVENT, encode_event, error_event, event_data, iter_events
from middleware.input_guardrails import unavailable

NAME = OUTPUT_STAGE
log = logging.getLogger("rag_gateway.guardrails")
HEADER_KEYS = ("id", "created", "model", "system_fingerprint")


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
        if response.stream is not None:
            response.stream = self.guard_stream(ctx, response.stream)
            return response
        record = Recorder(ctx, NAME)
        try:
            data = await self.guard.check_completion(response.json(), record)
        except Exception as exc:  # never a 500: follow on_error
            log.exception("output guardrails failed for request %s", ctx.request_id)
            ctx.decide(NAME, "error", on_error=self.settings.on_error, error=type(exc).__name__)
            if self.settings.on_error == "fail_closed":
                raise unavailable(NAME) from exc
            return response
        if any(
            c.get("finish_reason") == "content_filter"
            for c in data.get("choices") or []
            if isinstance(c, dict)
        ):
            ctx.response_headers["x-gateway-guardrail"] = "content_filter"
        response.set_json(data)
        return response

    async def guard_stream(self, ctx: RequestContext, upstream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        record = Recorder(ctx, NAME)
        scanners: dict[int, StreamScanner] = {}
        header: dict[str, Any] = {"object": "chat.completion.chunk"}
        unchecked = False  # fail_open after an engine error: relay the rest as it comes
        try:
            async for event in iter_events(upstream):
                payload = event_data(event)
                if payload is None or unchecked:
                    yield event
                    continue
                try:
                    if payload == b"[DONE]":
                        for chunk in self._flush_all(scanners, header, record):
                            yield encode_event(chunk)
                        yield event
                        continue
                    chunk = orjson.loads(payload)
                    if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
                        yield event
                        continue
                    if len(header) == 1:
                        header.update({k: chunk[k] for k in HEADER_KEYS if k in chunk})
                    mapped = self._scan_chunk(chunk, scanners, record)
                except Blocked:
                    ctx.response_headers["x-gateway-guardrail"] = "content_filter"
                    indices = sorted(scanners) or [0]
                    yield encode_event(
                        {
                            **header,
                            "choices": [
                                {"index": i, "delta": {}, "finish_reason": "content_filter"} for i in indices
                            ],
                        }
                    )
                    yield DONE_EVENT
                    return
                except orjson.JSONDecodeError:
                    yield event
                    continue
                except Exception as exc:
                    log.exception("output guardrails failed on a stream, request %s", ctx.request_id)
                    ctx.decide(NAME, "error", on_error=self.settings.on_error, error=type(exc).__name__)
                    if self.settings.on_error == "fail_closed":
                        yield error_event(
                            unavailable(NAME).message, type="api_error", code="guardrail_unavailable"
                        )
                        yield DONE_EVENT
                        return
                    unchecked = True
                    # What was held back goes out unchecked, as the policy says.
                    for index, scanner in scanners.items():
                        if scanner.pending:
                            yield encode_event(_content(header, index, scanner.pending))
                    yield event
                    continue
                if mapped is chunk:
                    yield event
                elif mapped is not None:
                    yield encode_event(mapped)
        finally:
            aclose = getattr(upstream, "aclose", None)
            if aclose is not None:
                await aclose()  # stop the upstream generation we will not relay

    def _record(self, step: Step, index: int, record: Recorder) -> str:
        for finding, action in step.acted:
            record(action, kind=_kind(finding), choice=index, **finding.describe())
        if step.blocked is not None:
            raise Blocked
        return step.text

    def _scan_chunk(
        self, chunk: dict[str, Any], scanners: dict[int, StreamScanner], record: Recorder
    ) -> dict[str, Any] | None:
        choices: list[dict[str, Any]] = []
        changed = False
        for choice in chunk["choices"]:
            if not isinstance(choice, dict):
                choices.append(choice)
                continue
            index = int(choice.get("index", 0))
            delta = choice.get("delta") or {}
            content = delta.get("content")
            finish = choice.get("finish_reason")
            if not isinstance(content, str) and finish is None:
                choices.append(choice)
                continue
            scanner = scanners.get(index)
            if scanner is None:
                scanner = scanners[index] = self.guard.scanner()
            text = self._record(scanner.feed(content), index, record) if isinstance(content, str) else ""
            if finish is not None:
                text += self._record(scanner.flush(), index, record)
            if text == content:
                choices.append(choice)
                continue
            changed = True
            if (
                not text
                and finish is None
                and set(delta) <= {"content"}
                and set(choice) <= {"index", "delta", "logprobs"}
            ):
                continue  # nothing to send for this choice yet
            choices.append({**choice, "delta": {**delta, "content": text}})
        if not changed:
            return chunk
        if not choices and chunk["choices"] and "usage" not in chunk:
            return None
        return {**chunk, "choices": choices}

    def _flush_all(
        self, scanners: dict[int, StreamScanner], header: dict[str, Any], record: Recorder
    ) -> list[dict[str, Any]]:
        chunks = []
        for index, scanner in scanners.items():
            text = self._record(scanner.flush(), index, record)
            if text:
                chunks.append(_content(header, index, text))
        return chunks


def _content(header: dict[str, Any], index: int, text: str) -> dict[str, Any]:
    return {**header, "choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}]}


def settings_of(policy: Policy) -> OutputGuardrailsPolicy:
    settings = getattr(policy, "output_guardrails", None)
    if settings is None:
        raise RuntimeError("the tenant Policy has no `output_guardrails` field yet (gateway/policy.py)")
    return settings


def build_guard(settings: OutputGuardrailsPolicy) -> OutputGuard:
    return OutputGuard(settings, PiiScanner(settings.pii), RuleMatcher(settings.denied))


def build(policy: Policy, services: Services) -> OutputGuardrailsStage | None:
    settings = settings_of(policy)
    if not settings.enabled:
        return None
    return OutputGuardrailsStage(settings, build_guard(settings))
