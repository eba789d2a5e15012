"""A cached answer: what is kept of a completed response, and how it is replayed.

One entry serves both formats: it holds the assistant message and finish reason (not the bytes
the client got), so a streaming request can be answered from a JSON response and vice versa.

Replays get a new id and `created`, and `usage` of zeros: the upstream billed nothing for this
request, and budgets and clients summing usage should see that. The original usage stays in the
entry and in the stage's decision. Citations cached with the answer are returned with it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.sse import DONE_EVENT, encode_event

ENTRY_VERSION = 1
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
# Headers later stages set that describe the answer itself, so a replay must carry them too.
REPLAYED_HEADERS = ("x-gateway-refused", "x-gateway-confidence", "x-gateway-warning")


@dataclass(slots=True)
class CachedAnswer:
    tenant: str
    scope: str
    model: str
    message: dict[str, Any]
    finish_reason: str
    stored_at: float = field(default_factory=time.time)
    citations: list[Any] | None = None
    usage: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # The last user turn it answered: a paraphrase is checked against it before being served.
    question: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": ENTRY_VERSION,
                "tenant": self.tenant,
                "scope": self.scope,
                "model": self.model,
                "message": self.message,
                "finish_reason": self.finish_reason,
                "stored_at": self.stored_at,
                "citations": self.citations,
                "usage": self.usage,
                "headers": self.headers,
                "question": self.question,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer | None:
        """None for anything unreadable or of another format version (treated as a miss)."""
        try:
            d = orjson.loads(raw)
            if d.get("v") != ENTRY_VERSION:
                return None
            return cls(
                tenant=d["tenant"],
                scope=d["scope"],
                model=d["model"],
                message=d["message"],
                finish_reason=d["finish_reason"],
                stored_at=float(d["stored_at"]),
                citations=d.get("citations"),
                usage=d.get("usage"),
                headers=dict(d.get("headers") or {}),
                question=d.get("question") if isinstance(d.get("question"), str) else None,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.message.get("tool_calls") or self.message.get("function_call"))


def answer_from_json(data: dict[str, Any], tenant: str, scope: str) -> CachedAnswer | None:
    """The entry for a complete non-streaming body, or None when it must not be cached."""
    choices = data.get("choices")
    if "error" in data or not isinstance(choices, list) or len(choices) != 1:
        return None
    choice = choices[0]
    message, finish = choice.get("message"), choice.get("finish_reason")
    if not isinstance(message, dict) or not finish:
        return None
    return CachedAnswer(
        tenant=tenant,
        scope=scope,
        model=str(data.get("model") or ""),
        message=message,
        finish_reason=str(finish),
        citations=data.get("citations"),
        usage=data.get("usage"),
    )


def _new_id() -> str:
    return "chatcmpl-cache-" + uuid.uuid4().hex[:24]


def replay_json(answer: CachedAnswer, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": _new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model or model,
        "choices": [
            {"index": 0, "message": answer.message, "finish_reason": answer.finish_reason, "logprobs": None}
        ],
        "usage": dict(ZERO_USAGE),
    }
    if answer.citations is not None:
        body["citations"] = answer.citations
    return body


async def replay_stream(answer: CachedAnswer, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """The answer as OpenAI streams it: role, content, tool calls, finish, [usage], [citations], [DONE]."""
    base = {"id": _new_id(), "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = answer.model or model

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return encode_event({**base, "choices": [choice]})

    message = answer.message
    yield chunk({"role": message.get("role") or "assistant", "content": ""})
    if message.get("content"):
        yield chunk({"content": message["content"]})
    if message.get("refusal"):
        yield chunk({"refusal": message["refusal"]})
    if message.get("tool_calls"):
        calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        yield chunk({"tool_calls": calls})
    if message.get("function_call"):
        yield chunk({"function_call": message["function_call"]})
    yield chunk({}, answer.finish_reason)
    if include_usage:
        yield encode_event({**base, "choices": [], "usage": dict(ZERO_USAGE)})
    if answer.citations is not None:
        yield encode_event({**base, "choices": [], "citations": answer.citations})
    yield DONE_EVENT
