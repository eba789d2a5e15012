"""Anthropic's Messages API on both edges: the client's protocol, and the upstream's.

Client side: a Messages request (content blocks, `system`, tools with `input_schema`, tool_use /
tool_result turns, images) becomes the internal chat-form request once, here; the answer goes
back as a Message, or as the API's named stream events (message_start, content_block_start /
_delta / _stop, message_delta, message_stop), and every failure as Anthropic's error envelope
`{"type": "error", "error": {"type", "message"}}` with Anthropic's status and type names.

Upstream side: an Anthropic deployment gets the client's own body when the client spoke Messages
(the stages' edits replayed on it, the client's anthropic-version / -beta headers passed on), or
a chat-form request translated into Messages; its JSON and events decode into the internal form.

What a chat upstream cannot honour (extended thinking, top_k, server tools, documents, ...) is
recorded in `GatewayRequest.native_only`: refused with a 400 naming the field when the call is
translated, relayed untouched to an Anthropic deployment. The README's Messages table lists
every field.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from gateway.edge import ErrorReport, ModelKind
from gateway.errors import GatewayError, StreamInterrupted, bad_request, unsupported
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
from gateway.protocols.sse import encode_named, event_data, event_name, iter_json, replay
from gateway.proxy import JSON_HEADERS, internal_error, read_body, request_headers
from gateway.validation import MAX_OUTPUT_TOKENS, parse_json_object, reject_forbidden, require_model
from middleware.auth import authenticate, check_model, x_api_key_or_bearer

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.context import RequestContext
    from gateway.policy import Policy

NAME = "messages"
log = logging.getLogger("rag_gateway.messages")
# What a chat-form request asks for when it names no cap: the Messages API requires one.
DEFAULT_MAX_TOKENS = 4096
# Fields a Messages call may carry that reach a chat upstream (see `_to_chat`).
TRANSLATED = frozenset(
    {
        "model", "messages", "system", "max_tokens", "stream", "temperature", "top_p",
        "stop_sequences", "metadata", "tools", "tool_choice", "service_tier", "output_config",
        "thinking", "cache_control",
    }
)  # fmt: skip
# output_config.effort values a chat upstream's reasoning_effort can carry.
EFFORTS = ("low", "medium", "high")
# Client headers an Anthropic deployment needs to read the body the way the client meant it.
RELAYED_CLIENT_HEADERS = ("anthropic-version", "anthropic-beta")

# Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Anthropic's stop reasons, and the internal (chat) finish reasons they mean.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def new_id() -> str:
    return "msg_" + os.urandom(12).hex()


# -- the client's request ------------------------------------------------------------------------


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise bad_request("system: must be a string or an array of text blocks", param="system")
    texts = []
    for i, block in enumerate(system):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            raise bad_request(
                f'system.{i}: each system block must be {{"type": "text", "text": "..."}}',
                param=f"system.{i}",
            )
        texts.append(block["text"])
    return "\n\n".join(texts)


def _image_part(block: dict[str, Any], where: str, native_only: dict[str, str]) -> dict[str, Any] | None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise bad_request(f"{where}.source: Field required", param=f"{where}.source")
    if source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise bad_request(
                f"{where}.source: a base64 image needs 'media_type' and 'data' strings",
                param=f"{where}.source",
            )
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    native_only[f"{where}.source.type"] = (
        f"image sources of type '{source.get('type')}' (Anthropic's Files API)"
    )
    return None


def _tool_result_text(content: Any, where: str, native_only: dict[str, str]) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise bad_request(
            f"{where}.content: must be a string or an array of blocks", param=f"{where}.content"
        )
    texts = []
    for j, block in enumerate(content):
        if isinstance(block, dict) and block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            native_only[f"{where}.content.{j}.type"] = f"tool results holding '{kind}' blocks"
    return "\n".join(texts)


def _user_messages(content: Any, where: str, native_only: dict[str, str]) -> list[dict[str, Any]]:
    """One Messages user turn as chat messages: tool results first (each its own `tool` message,
    as chat requires them right after the assistant's calls), then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        here = f"{where}.content.{j}"
        kind = block.get("type")
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise bad_request(f"{here}.text: Field required", param=f"{here}.text")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            part = _image_part(block, here, native_only)
            if part is not None:
                parts.append(part)
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise bad_request(f"{here}.tool_use_id: Field required", param=f"{here}.tool_use_id")
            text = _tool_result_text(block.get("content"), here, native_only)
            if block.get("is_error"):
                text = f"Error: {text}"  # chat has no error flag; the model must still see it failed
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        else:
            native_only[f"{here}.type"] = f"content blocks of type '{kind}'"
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant_message(content: Any, where: str, native_only: dict[str, str]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        here = f"{where}.content.{j}"
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            for name in ("id", "name"):
                if not isinstance(block.get(name), str):
                    raise bad_request(f"{here}.{name}: Field required", param=f"{here}.{name}")
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {
                        "name": block["name"],
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            # The model's earlier reasoning: a chat upstream has no place for it and the
            # conversation reads the same without it (documented as dropped).
            continue
        else:
            native_only[f"{here}.type"] = f"assistant content blocks of type '{kind}'"
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools: Any, native_only: dict[str, str]) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad_request("tools: must be an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise bad_request(f"tools.{i}: must be an object", param=f"tools.{i}")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            native_only[f"tools.{i}.type"] = f"Anthropic's built-in '{kind}' tool is run by Anthropic"
            continue
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise bad_request(f"tools.{i}.name: Field required", param=f"tools.{i}.name")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise bad_request(f"tools.{i}.input_schema: Field required", param=f"tools.{i}.input_schema")
        function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise bad_request(
            'tool_choice: must be {"type": "auto" | "any" | "none"} or {"type": "tool", "name": ...}',
            param="tool_choice",
        )
    if choice.get("disable_parallel_tool_use") is True and "tools" in chat:
        chat["parallel_tool_calls"] = False


def _output_config(config: Any, chat: dict[str, Any], native_only: dict[str, str]) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise bad_request("output_config: must be an object", param="output_config")
    for key in config.keys() - {"format", "effort"}:
        native_only[f"output_config.{key}"] = "no chat completions equivalent"
    fmt = config.get("format")
    if fmt is not None:
        if (
            not isinstance(fmt, dict)
            or fmt.get("type") != "json_schema"
            or not isinstance(fmt.get("schema"), dict)
        ):
            raise bad_request(
                'output_config.format: must be {"type": "json_schema", "schema": {...}}',
                param="output_config.format",
            )
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True},
        }
    effort = config.get("effort")
    if effort in EFFORTS:
        chat["reasoning_effort"] = effort
    elif effort is not None:
        native_only["output_config.effort"] = f"effort '{effort}' has no chat reasoning_effort equivalent"


def _check_scalars(body: dict[str, Any]) -> None:
    for name, kinds, described in (
        ("stream", (bool,), "a boolean"),
        ("temperature", (int, float), "a number"),
        ("top_p", (int, float), "a number"),
        ("top_k", (int,), "an integer"),
        ("metadata", (dict,), "an object"),
        ("stop_sequences", (list,), "an array of strings"),
    ):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        ):
            raise bad_request(f"{name}: Input should be {described}", param=name)
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not 0 <= temperature <= 1:
        raise bad_request("temperature: must be between 0 and 1", param="temperature")
    stops = body.get("stop_sequences") or []
    if not all(isinstance(s, str) for s in stops):
        raise bad_request("stop_sequences: Input should be an array of strings", param="stop_sequences")


def decode_request(
    body: dict[str, Any], headers: dict[str, str], *, need_max_tokens: bool = True
) -> GatewayRequest:
    """Validate a Messages call and translate it into the internal (chat-form) request."""
    reject_forbidden(body)
    model = require_model(body)
    max_tokens = body.get("max_tokens")
    if need_max_tokens and max_tokens is None:
        raise bad_request("max_tokens: Field required", param="max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 0 <= max_tokens <= MAX_OUTPUT_TOKENS
    ):
        raise bad_request(
            f"max_tokens: must be an integer between 0 and {MAX_OUTPUT_TOKENS}", param="max_tokens"
        )
    messages = body.get("messages")
    if messages is None:
        raise bad_request("messages: Field required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: must be a non-empty array of messages", param="messages")
    _check_scalars(body)

    native_only: dict[str, str] = {}
    for name in body.keys() - TRANSLATED:
        native_only[name] = "a Messages API field with no chat completions equivalent"
    if max_tokens == 0:
        native_only["max_tokens"] = "max_tokens 0 (warming Anthropic's prompt cache) generates nothing"
    thinking = body.get("thinking")
    # "adaptive" lets the model decide whether to think: a model that does not is within it.
    if thinking is not None and not (
        isinstance(thinking, dict) and thinking.get("type") in ("disabled", "adaptive")
    ):
        native_only["thinking"] = "extended thinking with a token budget exists only on Anthropic models"
    chat_messages: list[dict[str, Any]] = []
    if body.get("system") is not None:
        system = _system_text(body["system"])
        if system:
            chat_messages.append({"role": "system", "content": system})
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise bad_request(f"{where}: must be an object with 'role' and 'content'", param=where)
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise bad_request(
                f"{where}.role: must be 'user' or 'assistant' (put instructions in the top-level "
                "'system' parameter)",
                param=f"{where}.role",
            )
        if not isinstance(content, str | list):
            raise bad_request(
                f"{where}.content: must be a string or an array of content blocks", param=f"{where}.content"
            )
        if isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise bad_request(
                        f"{where}.content.{j}: must be an object with a 'type' (e.g. "
                        '{"type": "text", "text": "..."})',
                        param=f"{where}.content.{j}",
                    )
        if role == "user":
            chat_messages.extend(_user_messages(content, where, native_only))
        else:
            chat_messages.append(_assistant_message(content, where, native_only))

    chat: dict[str, Any] = {"model": model, "messages": chat_messages}
    if body.get("tools"):
        tools = _tools(body["tools"], native_only)
        if tools:
            chat["tools"] = tools
    _tool_choice(body.get("tool_choice"), chat)
    if "tools" not in chat:
        chat.pop("tool_choice", None)
    if max_tokens:
        chat["max_tokens"] = max_tokens
    for name in ("temperature", "top_p", "stream"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        chat["user"] = user
    _output_config(body.get("output_config"), chat, native_only)
    # cache_control (top level or on blocks) marks where Anthropic may cache the prompt: a hint
    # about cost, not about the answer, so a chat upstream goes without it.
    if body.get("service_tier") not in (None, "auto", "standard_only"):
        raise bad_request("service_tier: must be 'auto' or 'standard_only'", param="service_tier")

    request = GatewayRequest(chat, NAME, native=body)
    request.native_only = native_only
    request.relay_headers = {h: headers[h] for h in RELAYED_CLIENT_HEADERS if h in headers}
    return request


# -- the client's answer -------------------------------------------------------------------------


def _tool_input(arguments: str) -> Any:
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        # A model that wrote broken JSON: the client still gets what it wrote, under a key it can see.
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def usage_object(usage: Usage | None) -> dict[str, Any]:
    usage = usage or Usage(0, 0)
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    return {
        "input_tokens": usage.input_tokens - cached,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def encode_json(completion: Completion) -> dict[str, Any]:
    choice = completion.choices[0]
    content: list[dict[str, Any]] = []
    text = (choice.text or "") + (choice.refusal or "")
    if text or not choice.tool_calls:
        if text:
            content.append({"type": "text", "text": text})
    for call in choice.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(call.arguments)}
        )
    reason = STOP_REASONS.get(choice.finish_reason or "stop", "end_turn")
    if choice.refusal and not choice.text:
        reason = "refusal"
    body: dict[str, Any] = {
        "id": completion.id if completion.id.startswith("msg_") else new_id(),
        "type": "message",
        "role": "assistant",
        "model": completion.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": None,
        "usage": usage_object(completion.usage),
    }
    if completion.citations is not None:
        body["citations"] = completion.citations  # the retrieval stage's sources, as chat gives them
    return body


def error_type(error: GatewayError) -> str:
    if error.status in ERROR_TYPES:
        return ERROR_TYPES[error.status]
    return "invalid_request_error" if error.status < 500 else "api_error"


def error_envelope(error: GatewayError) -> dict[str, Any]:
    # `code` beside Anthropic's fields: the gateway's own reason (insufficient_quota,
    # rate_limit_exceeded, ...), which Anthropic's coarser types cannot tell apart.
    return {
        "type": "error",
        "error": {"type": error_type(error), "message": error.message, "code": error.code},
    }


class _StreamWriter:
    """Internal events as Messages stream events. A block opens with its first delta and closes
    when the next one starts or the message ends, so every block is stopped before message_delta."""

    def __init__(self, model: str) -> None:
        self.message_id = new_id()
        self.model = model
        self.index = -1  # the open block's index
        self.open: str | None = None  # "text" or "tool_use"
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.citations: list[dict[str, Any]] | None = None
        self.refused = False

    def start(self) -> list[bytes]:
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [
            encode_named("message_start", {"type": "message_start", "message": message}),
            encode_named("ping", {"type": "ping"}),
        ]

    def _open(self, block: dict[str, Any], kind: str) -> list[bytes]:
        out = self.close()
        self.index += 1
        self.open = kind
        out.append(
            encode_named(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )
        return out

    def text(self, text: str) -> list[bytes]:
        out = [] if self.open == "text" else self._open({"type": "text", "text": ""}, "text")
        delta = {"type": "text_delta", "text": text}
        out.append(
            encode_named(
                "content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}
            )
        )
        return out

    def tool_call(self, call_id: str, name: str) -> list[bytes]:
        return self._open({"type": "tool_use", "id": call_id, "name": name, "input": {}}, "tool_use")

    def arguments(self, partial: str) -> list[bytes]:
        if self.open != "tool_use":
            return []
        delta = {"type": "input_json_delta", "partial_json": partial}
        return [
            encode_named(
                "content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}
            )
        ]

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [encode_named("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def finish_events(self) -> list[bytes]:
        out = self.close()
        reason = STOP_REASONS.get(self.finish or "stop", "end_turn")
        if self.refused:
            reason = "refusal"
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": usage_object(self.usage),
        }
        if self.citations is not None:
            delta["citations"] = self.citations
        out.append(encode_named("message_delta", delta))
        out.append(encode_named("message_stop", {"type": "message_stop"}))
        return out


async def encode_stream(events: Events, model: str, report: ErrorReport) -> AsyncIterator[bytes]:
    writer = _StreamWriter(model)
    started = False
    try:
        async for event in events:
            if getattr(event, "choice", 0) != 0:
                continue  # n > 1 has no Messages form; only the first answer is spoken
            if isinstance(event, TextDelta):
                chunks = writer.text(event.text)
            elif isinstance(event, Start):
                writer.model = event.model or model
                started = True
                chunks = writer.start()
            elif isinstance(event, ToolArgumentsDelta):
                chunks = writer.arguments(event.arguments)
            elif isinstance(event, ToolCallStart):
                chunks = writer.tool_call(event.id, event.name)
            elif isinstance(event, RefusalDelta):
                writer.refused = True
                chunks = writer.text(event.text)
            elif isinstance(event, ChoiceEnd):
                writer.finish = event.reason
                chunks = []
            elif isinstance(event, UsageReport):
                writer.usage = event.usage
                chunks = []
            elif isinstance(event, Citations):
                writer.citations = event.citations
                chunks = []
            else:
                chunks = []
            for chunk in chunks:
                yield chunk
    except GatewayError as error:
        report(error)
        if not started:
            for chunk in writer.start():
                yield chunk
        yield encode_named("error", error_envelope(error))
        return
    for chunk in writer.finish_events():
        yield chunk


class MessagesClient:
    name = NAME
    model_kind: ModelKind = "chat"
    key_hint = "Send it as the 'x-api-key' header (or 'Authorization: Bearer <key>')."

    def presented_key(self, headers: dict[str, str]) -> str | None:
        return x_api_key_or_bearer(headers)

    async def decode(self, body: dict[str, Any], headers: dict[str, str], policy: Policy) -> GatewayRequest:
        return decode_request(body, headers)

    async def encode_json(self, completion: Completion, ctx: RequestContext) -> bytes:
        return orjson.dumps(encode_json(completion))

    def encode_stream(self, events: Events, ctx: RequestContext, report: ErrorReport) -> AsyncIterator[bytes]:
        return encode_stream(events, ctx.model, report)

    async def relay_json(self, raw: bytes, ctx: RequestContext) -> bytes:
        return raw

    def relay_stream(self, chunks: AsyncIterator[bytes], ctx: RequestContext) -> AsyncIterator[bytes]:
        return chunks

    def error_response(self, error: GatewayError) -> tuple[int, bytes]:
        return error.status, orjson.dumps(error_envelope(error))

    def stream_error(self, error: GatewayError) -> bytes:
        return encode_named("error", error_envelope(error))


class CountTokensEndpoint:
    """POST /v1/messages/count_tokens: the prompt's size with the model's tokenizer, no model call.

    Counted on the translated (chat-form) request with the tokenizer the pricing uses, so the
    figure is the one a budget would reserve; for Claude models that is Anthropic's published
    tokenizer, an estimate of what Anthropic bills (their count also covers tool framing)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.client = MessagesClient()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = request_headers(scope)
        try:
            if scope["method"] != "POST":
                raise GatewayError(405, f"Method {scope['method']} is not allowed here; use POST.")
            _, policy = authenticate(
                self.client.presented_key(headers), self.gateway.policies.snapshot, self.client.key_hint
            )
            config = self.gateway.config.server
            body = parse_json_object(
                await read_body(receive, headers, config.max_body_bytes, config.body_timeout_s)
            )
            request = decode_request(body, headers, need_max_tokens=False)
            known = self.gateway.serves(request.model, "chat")
            check_model(policy, request.model, known, self.gateway.models_of(policy, "chat"))
            count = self.gateway.services.pricing.count_prompt(request.model, request.body)
            status, payload = 200, orjson.dumps({"input_tokens": count})
        except GatewayError as error:
            status, payload = self.client.error_response(error)
        except Exception:
            request_id = headers.get("x-request-id", "count_tokens")
            log.exception("request %s: count_tokens failed", request_id)
            status, payload = self.client.error_response(internal_error(request_id))
        await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": payload})


# -- the upstream's request ----------------------------------------------------------------------


def upstream_body(request: GatewayRequest, upstream_model: str) -> dict[str, Any]:
    """The body for an Anthropic Messages endpoint."""
    if request.protocol == NAME and request.native is not None:
        return _native_body(request, upstream_model)
    return _from_chat(request, upstream_model)


def _rewritten_content(request: GatewayRequest, content: Any) -> Any:
    if isinstance(content, str):
        return request.rewritten(content)
    if not isinstance(content, list):
        return content
    out = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            block = {**block, "text": request.rewritten(block["text"])}
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            block = {**block, "content": _rewritten_content(request, block.get("content"))}
        out.append(block)
    return out


def _native_body(request: GatewayRequest, upstream_model: str) -> dict[str, Any]:
    body = dict(request.native)  # type: ignore[arg-type]
    body["model"] = upstream_model
    if request.text_rewrites:
        body["messages"] = [
            {**m, "content": _rewritten_content(request, m.get("content"))} for m in body["messages"]
        ]
    added = "\n\n".join(request.system_added)
    system = body.get("system")
    if request.text_rewrites and system is not None:
        system = _rewritten_content(request, system)
    if added:
        if isinstance(system, list):
            system = [*system, {"type": "text", "text": added}]
        elif system:
            system = f"{system}\n\n{added}"
        else:
            system = added
    if system is not None:
        body["system"] = system
    return body


_DATA_URL = re.compile(r"^data:([\w.+/-]+);base64,(.*)$", re.DOTALL)


def _anthropic_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content or ():
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url") or "")
            match = _DATA_URL.match(url)
            if match:
                source = {"type": "base64", "media_type": match.group(1), "data": match.group(2)}
            else:
                source = {"type": "url", "url": url}
            blocks.append({"type": "image", "source": source})
        else:
            raise unsupported(
                "messages", f"content parts of type '{part.get('type')}' have no Messages API form"
            )
    return blocks


# Chat fields with no Messages equivalent: refused for an Anthropic deployment, never dropped.
_CHAT_ONLY = (
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "audio",
)


def _from_chat(request: GatewayRequest, upstream_model: str) -> dict[str, Any]:
    """A chat-form request for a deployment that speaks only the Messages API."""
    body = request.body
    for name in _CHAT_ONLY:
        if body.get(name) not in (None, False, 0):
            raise unsupported(
                name,
                f"'{name}' is not supported for model '{request.model}': its deployment speaks "
                "Anthropic's Messages API, which has no equivalent.",
            )
    if request.choices() > 1:
        raise unsupported(
            "n", f"'n' > 1 is not supported for model '{request.model}': the Messages API returns one answer."
        )
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise unsupported(
            "response_format",
            f"'response_format' is not supported for model '{request.model}': the Messages API has no "
            "structured-output mode; describe the JSON in the prompt or use a tool.",
        )
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def append(role: str, blocks: list[dict[str, Any]]) -> None:
        # Messages alternates user and assistant: consecutive turns of one role become one.
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for message in request.messages:
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.append(
                content
                if isinstance(content, str)
                else " ".join(b["text"] for b in _anthropic_blocks(content))
            )
        elif role == "tool" or role == "function":
            text = (
                content
                if isinstance(content, str)
                else " ".join(b.get("text", "") for b in _anthropic_blocks(content))
            )
            append(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": str(message.get("tool_call_id") or ""),
                        "content": text,
                    }
                ],
            )
        elif role == "assistant":
            blocks = _anthropic_blocks(content)
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": _tool_input(str(function.get("arguments") or "")),
                    }
                )
            append("assistant", blocks)
        else:
            append("user", _anthropic_blocks(content))
    out: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages,
        "max_tokens": request.max_output_tokens() or DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = "\n\n".join(system)
    for name in ("temperature", "top_p", "stream"):
        if body.get(name) is not None:
            out[name] = body[name]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("tools"):
        out["tools"] = [
            {
                "name": (tool.get("function") or {}).get("name"),
                "description": (tool.get("function") or {}).get("description", ""),
                "input_schema": (tool.get("function") or {}).get("parameters")
                or {"type": "object", "properties": {}},
            }
            for tool in body["tools"]
            if tool.get("type") == "function"
        ]
        choice = body.get("tool_choice")
        if choice == "required":
            out["tool_choice"] = {"type": "any"}
        elif choice == "none":
            out["tool_choice"] = {"type": "none"}
        elif isinstance(choice, dict):
            out["tool_choice"] = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
        elif choice == "auto":
            out["tool_choice"] = {"type": "auto"}
        if body.get("parallel_tool_calls") is False:
            out.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
    return out


# -- the upstream's answer -----------------------------------------------------------------------


def usage_of(data: Any) -> Usage | None:
    if not isinstance(data, dict) or not isinstance(data.get("input_tokens"), int):
        return None
    read = data.get("cache_read_input_tokens") or 0
    written = data.get("cache_creation_input_tokens") or 0
    output = data.get("output_tokens")
    return Usage(data["input_tokens"] + read + written, output if isinstance(output, int) else 0, read)


def usage_of_body(data: dict[str, Any]) -> Usage | None:
    return usage_of(data.get("usage"))


def _finish(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def decode_json(data: dict[str, Any]) -> Completion:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in data.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            calls.append(
                ToolCall(
                    str(block.get("id") or ""),
                    str(block.get("name") or ""),
                    orjson.dumps(block.get("input") or {}).decode(),
                )
            )
    finish = _finish(data.get("stop_reason"))
    choice = Choice(
        0, text="".join(texts) if texts or not calls else None, tool_calls=calls, finish_reason=finish
    )
    return Completion(
        id=str(data.get("id") or new_id()),
        model=str(data.get("model") or ""),
        created=int(time.time()),
        choices=[choice],
        usage=usage_of(data.get("usage")),
    )


def _updated(usage: Usage, reported: Any) -> Usage:
    """message_start's usage with message_delta's (cumulative) counts, which newer servers send
    for input tokens too."""
    if not isinstance(reported, dict):
        return usage
    output = reported.get("output_tokens")
    output = output if isinstance(output, int) else usage.output_tokens
    whole = usage_of(reported)
    if whole is not None and whole.input_tokens:
        return Usage(whole.input_tokens, output, whole.cached_input_tokens)
    return Usage(usage.input_tokens, output, usage.cached_input_tokens)


def _stream_error(data: dict[str, Any]) -> StreamInterrupted:
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    kind = str(error.get("type") or "api_error")
    message = str(error.get("message") or "unknown error")
    if kind == "overloaded_error":
        return StreamInterrupted(
            f"the upstream is overloaded mid-stream: {message}", code="upstream_overloaded"
        )
    return StreamInterrupted(f"the upstream reported an error mid-stream ({kind}): {message}")


async def decode_stream(chunks: AsyncIterator[bytes]) -> Events:
    calls = 0
    usage = Usage(0, 0)
    async for data in iter_json(chunks):
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                yield TextDelta(str(delta.get("text") or ""))
            elif delta.get("type") == "input_json_delta" and calls:
                yield ToolArgumentsDelta(calls - 1, str(delta.get("partial_json") or ""))
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                yield ToolCallStart(calls, str(block.get("id") or ""), str(block.get("name") or ""))
                calls += 1
            elif block.get("type") == "text" and block.get("text"):
                yield TextDelta(str(block["text"]))
        elif kind == "message_start":
            message = data.get("message") or {}
            usage = usage_of(message.get("usage")) or usage
            yield Start(str(message.get("id") or new_id()), str(message.get("model") or ""), int(time.time()))
        elif kind == "message_delta":
            usage = _updated(usage, data.get("usage"))
            yield ChoiceEnd(_finish((data.get("delta") or {}).get("stop_reason")))
        elif kind == "message_stop":
            yield UsageReport(usage)
            return
        elif kind == "error":
            raise _stream_error(data)


class StreamTap:
    """What accounting needs from a Messages stream relayed untouched: id, model and input usage
    from message_start, output usage and stop reason from message_delta, when text first came."""

    def __init__(self, strip: bool) -> None:
        self.facts = AnswerFacts()
        self._usage = Usage(0, 0)
        self._kept: list[bytes] = []

    def feed(self, event: bytes) -> bytes | None:
        facts = self.facts
        name = event_name(event) or ""
        if name == "content_block_delta":
            if facts.first_output is None:
                facts.mark_output()
            else:
                facts.output_events += 1
        elif name in ("message_start", "message_delta"):
            payload = event_data(event)
            data = orjson.loads(payload) if payload else {}
            if name == "message_start":
                message = data.get("message") or {}
                facts.id = str(message.get("id") or "")
                facts.model = str(message.get("model") or "")
                self._usage = usage_of(message.get("usage")) or self._usage
            else:
                self._usage = facts.usage = _updated(self._usage, data.get("usage"))
                facts.finish_reasons.append(_finish((data.get("delta") or {}).get("stop_reason")))
        if facts.usage is None:
            self._kept.append(event)
        return event

    async def generated_text(self) -> str:
        return await text_of_events(decode_stream(replay(self._kept)))
