"""Focused tests of the Messages and completions codecs: translations both ways, stream decoding
of upstream answers, error envelopes. The HTTP behaviour is in test_messages_api.py and
test_completions_api.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.errors import GatewayError, StreamInterrupted
from gateway.protocols import completions, messages
from gateway.protocols.model import (
    ChoiceEnd,
    Start,
    TextDelta,
    ToolArgumentsDelta,
    ToolCallStart,
    UsageReport,
)
from gateway.protocols.request import GatewayRequest


def decode(body: dict[str, Any], headers: dict[str, str] | None = None) -> GatewayRequest:
    return messages.decode_request({"model": "m", "max_tokens": 10, **body}, headers or {})


async def _chunks(*events: bytes) -> AsyncIterator[bytes]:
    for event in events:
        yield event


def named(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


async def collect(events: Any) -> list[Any]:
    return [event async for event in events]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        (422, "invalid_request_error"),
    ],
)
def test_error_types_follow_anthropics_status_table(status: int, kind: str) -> None:
    code, body = messages.MessagesClient().error_response(GatewayError(status, "why", code="our_code"))
    assert code == status
    assert orjson.loads(body) == {
        "type": "error",
        "error": {"type": kind, "message": "why", "code": "our_code"},
    }


def test_tool_results_come_before_the_turns_text_and_errors_say_so() -> None:
    request = decode(
        {
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "and then?", "cache_control": {"type": "ephemeral"}},
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "boom"}],
                            "is_error": True,
                        },
                    ],
                },
            ],
            "cache_control": {"type": "ephemeral"},
        }
    )
    assert request.native_only == {}  # cache_control is a cost hint: nothing to refuse
    assert request.messages[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert request.messages[2] == {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}
    assert request.messages[3] == {"role": "user", "content": "and then?"}


def test_anthropic_headers_are_kept_for_a_native_deployment() -> None:
    request = decode(
        {"messages": [{"role": "user", "content": "x"}]},
        {"anthropic-version": "2023-06-01", "anthropic-beta": "a,b", "x-api-key": "sk-client"},
    )
    assert request.relay_headers == {"anthropic-version": "2023-06-01", "anthropic-beta": "a,b"}


def test_native_body_replays_the_stages_edits() -> None:
    request = decode(
        {
            "system": [{"type": "text", "text": "Be kind."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "mail bob@example.com"}]}],
        }
    )
    request.add_system("[1] Source: a.md")
    request.replace_texts({(2, None): "mail <EMAIL_1>"})  # after both system messages
    body = messages.upstream_body(request, "claude-up")
    assert body["model"] == "claude-up"
    assert body["system"] == [
        {"type": "text", "text": "Be kind."},
        {"type": "text", "text": "[1] Source: a.md"},
    ]
    assert body["messages"][0]["content"][0]["text"] == "mail <EMAIL_1>"


def test_chat_to_messages_merges_turns_and_maps_tools() -> None:
    chat = GatewayRequest(
        {
            "model": "c",
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 2}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "r1"},
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}],
                },
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": False,
        }
    )
    body = messages.upstream_body(chat, "claude-up")
    assert body["system"] == "S" and body["max_tokens"] == messages.DEFAULT_MAX_TOKENS
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 2}}
    ]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "r1"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}},
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}


async def test_messages_stream_decodes_to_internal_events_with_usage() -> None:
    events = await collect(
        messages.decode_stream(
            _chunks(
                named(
                    "message_start",
                    message={
                        "id": "msg_1",
                        "model": "claude",
                        "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1},
                    },
                ),
                named("ping"),
                named("content_block_start", index=0, content_block={"type": "text", "text": ""}),
                named("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hi"}),
                named("content_block_stop", index=0),
                named(
                    "content_block_start",
                    index=1,
                    content_block={"type": "tool_use", "id": "t", "name": "f", "input": {}},
                ),
                named(
                    "content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"a"'}
                ),
                named(
                    "content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": ": 1}"}
                ),
                named("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 9}),
                named("message_stop"),
            )
        )
    )
    assert isinstance(events[0], Start) and events[0].id == "msg_1"
    assert events[1] == TextDelta("Hi")
    assert events[2] == ToolCallStart(0, "t", "f")
    assert [e.arguments for e in events if isinstance(e, ToolArgumentsDelta)] == ['{"a"', ": 1}"]
    assert ChoiceEnd("tool_calls") in events
    usage = events[-1]
    assert isinstance(usage, UsageReport)
    assert (usage.usage.input_tokens, usage.usage.cached_input_tokens, usage.usage.output_tokens) == (
        25,
        5,
        9,
    )


async def test_messages_error_event_raises() -> None:
    stream = messages.decode_stream(
        _chunks(
            named("message_start", message={"id": "m", "model": "c", "usage": {"input_tokens": 1}}),
            named("error", error={"type": "overloaded_error", "message": "Overloaded"}),
        )
    )
    with pytest.raises(StreamInterrupted, match="overloaded"):
        await collect(stream)


def test_completions_native_body_puts_added_instructions_before_the_prompt() -> None:
    request = completions.decode_request({"model": "m", "prompt": "Card 4111 1111 1111 1111", "echo": True})
    assert set(request.native_only) == {"echo"}
    request.add_system("Sources: [1] a.md")
    request.replace_texts({(1, None): "Card <CARD_1>"})
    body = completions.upstream_body(request, "instruct-1")
    assert body["prompt"] == "Sources: [1] a.md\n\nCard <CARD_1>" and body["echo"] is True
    assert body["max_tokens"] == completions.DEFAULT_MAX_TOKENS and body["model"] == "instruct-1"


async def test_completions_stream_decodes_text_and_usage() -> None:
    def chunk(**data: Any) -> bytes:
        return b"data: " + orjson.dumps({"id": "cmpl-1", "model": "i", "created": 1, **data}) + b"\n\n"

    events = await collect(
        completions.decode_stream(
            _chunks(
                chunk(choices=[{"index": 0, "text": "Hel", "finish_reason": None}]),
                chunk(choices=[{"index": 0, "text": "lo", "finish_reason": "length"}]),
                chunk(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
                b"data: [DONE]\n\n",
            )
        )
    )
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo"]
    assert ChoiceEnd("length") in events
    assert isinstance(events[-1], UsageReport) and events[-1].usage.total_tokens == 5
