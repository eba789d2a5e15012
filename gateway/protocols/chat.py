"""OpenAI chat completions on both edges: the client's protocol, and the upstream's.

Client side: validate a request into the internal `GatewayRequest` (already its form), encode a
`Completion` or an event stream back as chat completion JSON / chunks. Upstream side: the body for
a chat completions endpoint, and the decoders from its JSON and its SSE chunks into the internal
form. A stream relayed byte for byte never goes through here.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from gateway.errors import GatewayError, StreamInterrupted, bad_request
from gateway.protocols.facts import AnswerFacts, text_of_events
from gateway.protocols.model import (
    Choice,
    ChoiceEnd,
    Citations,
    Completion,
    Events,
    RefusalDelta,
    Start,
    TextDelta,
    ToolArgumentsDelta,
    ToolCall,
    ToolCallStart,
    Usage,
    UsageReport,
)
from gateway.protocols.request import GatewayRequest
from gateway.protocols.sse import DONE_EVENT, encode_event, event_data, iter_json, replay
from gateway.validation import check_types, reject_forbidden, require_model

NAME = "chat"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
ErrorReport = Callable[[GatewayError], None]


# -- the client's request ---------------------------------------------------------------------


def decode_request(body: dict[str, Any]) -> GatewayRequest:
    """Validate a chat completion request: clear 400s naming the parameter, unknown fields kept."""
    reject_forbidden(body)
    require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_request(
            "you must provide a messages parameter", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages", code="invalid_type")
    for i, message in enumerate(messages):
        _check_message(i, message)
    check_types(body)
    return GatewayRequest(body, NAME)


def _check_message(i: int, message: Any) -> None:
    if not isinstance(message, dict):
        raise bad_request(f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_type")
    role = message.get("role")
    if role not in ROLES:
        raise bad_request(
            f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}",
            param=f"messages[{i}].role",
            code="invalid_value",
        )
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise bad_request(
            f"messages[{i}].content must be a string or an array of content parts",
            param=f"messages[{i}].content",
            code="invalid_type",
        )
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request(
                    f"messages[{i}].content[{j}] must be an object with a 'type' (e.g. "
                    '{"type": "text", "text": "..."})',
                    param=f"messages[{i}].content[{j}]",
                    code="invalid_type",
                )
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise bad_request(
            f"messages[{i}].name must be a string", param=f"messages[{i}].name", code="invalid_type"
        )
    if content is None and role not in ("assistant", "function") and not message.get("tool_calls"):
        raise bad_request(
            f"messages[{i}].content is required for role '{role}'",
            param=f"messages[{i}].content",
            code="missing_required_parameter",
        )


# -- the upstream's request -------------------------------------------------------------------


def upstream_body(request: GatewayRequest, upstream_model: str) -> dict[str, Any]:
    """The body for a chat completions endpoint: the internal form, with the upstream's model name.

    Streams always ask for usage: accounting needs it, and the chunk is stripped again at the
    edge when the client did not ask for it."""
    body = dict(request.body)
    body["model"] = upstream_model
    if request.stream:
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        options["include_usage"] = True
        body["stream_options"] = options
    return body


# -- the upstream's answer --------------------------------------------------------------------


def usage_of(data: Any) -> Usage | None:
    """Usage from a chat `usage` object (also the legacy completions one)."""
    if not isinstance(data, dict):
        return None
    prompt, completion = data.get("prompt_tokens"), data.get("completion_tokens")
    if not isinstance(prompt, int) or isinstance(prompt, bool):
        return None
    details = data.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    out_details = data.get("completion_tokens_details")
    reasoning = out_details.get("reasoning_tokens") if isinstance(out_details, dict) else 0
    return Usage(
        prompt,
        completion if isinstance(completion, int) and not isinstance(completion, bool) else 0,
        cached if isinstance(cached, int) else 0,
        reasoning if isinstance(reasoning, int) else 0,
    )


def _tool_calls(message: dict[str, Any]) -> list[ToolCall]:
    calls = []
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        calls.append(
            ToolCall(
                str(call.get("id") or ""),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
            )
        )
    return calls


def decode_json(data: dict[str, Any]) -> Completion:
    choices = []
    for position, raw in enumerate(data.get("choices") or ()):
        if not isinstance(raw, dict):
            continue
        message = raw.get("message") or {}
        content = message.get("content")
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        choices.append(
            Choice(
                index=raw.get("index", position) if isinstance(raw.get("index"), int) else position,
                text=content if isinstance(content, str) else None,
                refusal=message.get("refusal") if isinstance(message.get("refusal"), str) else None,
                tool_calls=_tool_calls(message),
                finish_reason=raw.get("finish_reason") if isinstance(raw.get("finish_reason"), str) else None,
                logprobs=raw.get("logprobs"),
            )
        )
    citations = data.get("citations")
    return Completion(
        id=str(data.get("id") or new_id()),
        model=str(data.get("model") or ""),
        created=data.get("created") if isinstance(data.get("created"), int) else int(time.time()),
        choices=choices or [Choice(0)],
        usage=usage_of(data.get("usage")),
        citations=citations if isinstance(citations, list) else None,
    )


async def decode_stream(chunks: AsyncIterator[bytes]) -> Events:
    """Chat completion chunks as internal events. The byte relay below already raises on a stream
    that ends without [DONE]; an error object inside the stream is raised here."""
    started = False
    # A call's start waits for its first arguments (or the finish): some servers split the name.
    pending: dict[tuple[int, int], list[str]] = {}

    def flush(choice: int | None = None) -> list[ToolCallStart]:
        ready = [k for k in pending if choice is None or k[0] == choice]
        return [ToolCallStart(k[1], *pending.pop(k), k[0]) for k in ready]  # type: ignore[misc]

    async for chunk in iter_json(chunks):
        raise_reported_error(chunk)
        if not started:
            started = True
            created = chunk.get("created")
            yield Start(
                str(chunk.get("id") or new_id()),
                str(chunk.get("model") or ""),
                created if isinstance(created, int) else int(time.time()),
            )
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                yield TextDelta(content, index, choice.get("logprobs"))
            if delta.get("refusal"):
                yield RefusalDelta(delta["refusal"], index)
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                key = (index, call.get("index", 0))
                function = call.get("function") or {}
                if call.get("id") and key not in pending:
                    for start in flush(index):
                        yield start
                    pending[key] = [str(call["id"]), ""]
                if function.get("name"):
                    pending.setdefault(key, ["", ""])[1] += str(function["name"])
                if function.get("arguments"):
                    if key in pending:
                        yield ToolCallStart(key[1], *pending.pop(key), index)  # type: ignore[misc]
                    yield ToolArgumentsDelta(key[1], function["arguments"], index)
            if choice.get("finish_reason"):
                for start in flush(index):
                    yield start
                yield ChoiceEnd(choice["finish_reason"], index)
        usage = usage_of(chunk.get("usage"))
        if usage is not None:
            yield UsageReport(usage)
        if isinstance(chunk.get("citations"), list):
            yield Citations(chunk["citations"])
    for start in flush():
        yield start


def raise_reported_error(chunk: dict[str, Any]) -> None:
    """An OpenAI stream chunk that carries an error object ends the stream as a failure."""
    error = chunk.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise StreamInterrupted(f"the upstream reported an error mid-stream: {message}")


# -- the client's answer ----------------------------------------------------------------------


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def _message(choice: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": choice.refusal}
    if choice.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in choice.tool_calls
        ]
    return message


def encode_json(completion: Completion, request: GatewayRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion.id,
        "object": "chat.completion",
        "created": completion.created,
        "model": completion.model,
        "choices": [
            {
                "index": c.index,
                "message": _message(c),
                "finish_reason": c.finish_reason or "stop",
                "logprobs": c.logprobs,
            }
            for c in completion.choices
        ],
        "usage": (completion.usage or Usage(0, 0)).chat(),
    }
    if completion.citations is not None:
        body["citations"] = completion.citations
    return body


def error_event(error: GatewayError) -> bytes:
    # The openai SDK raises APIError when a stream event carries an "error" object.
    return encode_event(error.envelope())


async def encode_stream(events: Events, request: GatewayRequest, report: ErrorReport) -> AsyncIterator[bytes]:
    """Events as chat completion chunks, ending in [DONE]; a failure ends with an error event."""
    base: dict[str, Any] = {"id": new_id(), "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = request.model
    started = False

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return encode_event({**base, "choices": [choice]})

    try:
        async for event in events:
            if isinstance(event, TextDelta):
                yield chunk(event.choice, {"content": event.text}, logprobs=event.logprobs)
            elif isinstance(event, Start):
                base.update(id=event.id, created=event.created, model=event.model or request.model)
                started = True
                yield chunk(0, {"role": "assistant", "content": ""})
            elif isinstance(event, ToolArgumentsDelta):
                call = {"index": event.call, "function": {"arguments": event.arguments}}
                yield chunk(event.choice, {"tool_calls": [call]})
            elif isinstance(event, ToolCallStart):
                call = {
                    "index": event.call,
                    "id": event.id,
                    "type": "function",
                    "function": {"name": event.name, "arguments": ""},
                }
                yield chunk(event.choice, {"tool_calls": [call]})
            elif isinstance(event, RefusalDelta):
                yield chunk(event.choice, {"refusal": event.text})
            elif isinstance(event, ChoiceEnd):
                yield chunk(event.choice, {}, event.reason)
            elif isinstance(event, UsageReport):
                if request.client_wants_usage:
                    yield encode_event({**base, "choices": [], "usage": event.usage.chat()})
            elif isinstance(event, Citations):
                yield encode_event({**base, "choices": [], "citations": event.citations})
    except GatewayError as error:
        report(error)
        if not started:
            yield chunk(0, {"role": "assistant", "content": ""})
        yield error_event(error)
        return
    yield DONE_EVENT


# -- usage of an answer relayed as bytes ------------------------------------------------------


def usage_of_body(data: dict[str, Any]) -> Usage | None:
    return usage_of(data.get("usage"))


_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([a-z_]+)"')


def pattern_for_field(*names: str) -> re.Pattern[bytes]:
    """Finds a non-empty string value of one of these fields in raw chunk bytes."""
    return re.compile(rb'"(?:' + b"|".join(n.encode() for n in names) + rb')"\s*:\s*"[^"]')


_CONTENT = pattern_for_field("content", "arguments")


class StreamTap:
    """Reads what accounting and tracing need from chat chunks as they are relayed untouched:
    parses only the first chunk (id, model) and the one carrying usage; finish reasons and the
    first generated text are found by pattern. `strip`: the client did not ask for usage (the
    gateway did), so the usage-only chunk is dropped. Without usage, the kept events are decoded
    at the end so the text can be counted."""

    content_pattern = _CONTENT

    @staticmethod
    def decoder(chunks: AsyncIterator[bytes]) -> Events:
        return decode_stream(chunks)

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.facts = AnswerFacts()
        self._kept: list[bytes] = []

    def feed(self, event: bytes) -> bytes | None:
        facts = self.facts
        if facts.id is None:
            chunk = _chunk_of(event)
            if chunk is not None:
                facts.id = str(chunk.get("id") or "")
                facts.model = str(chunk.get("model") or "")
        if facts.first_output is None and self.content_pattern.search(event):
            facts.mark_output()
        elif facts.first_output is not None:
            facts.output_events += 1
        if b"finish_reason" in event:
            facts.finish_reasons.extend(m.decode() for m in _FINISH.findall(event))
        if _USAGE_OBJECT.search(event):
            chunk = _chunk_of(event)
            if chunk is not None:
                facts.usage = usage_of(chunk.get("usage")) or facts.usage
                if self.strip and not chunk.get("choices"):
                    return None
        if facts.usage is None:
            self._kept.append(event)
        return event

    async def generated_text(self) -> str:
        """The streamed text (for counting when the upstream sent no usage)."""
        return await text_of_events(self.decoder(replay(self._kept)))


def _chunk_of(event: bytes) -> dict[str, Any] | None:
    payload = event_data(event)
    if not payload or payload == b"[DONE]":
        return None
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None
