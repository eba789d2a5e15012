"""A cached answer: what is kept of a completed response, and how it is replayed.

One entry serves every format and protocol: it holds the assistant message and finish reason (not
the bytes the client got), so a streaming request can be answered from a JSON response and vice
versa, and an answer cached for a chat client can serve a Responses or Messages client.

Replays get a new id and `created`, and `usage` of zeros: the upstream billed nothing for this
request, and budgets and clients summing usage should see that. The original usage stays in the
entry and in the stage's decision. Citations cached with the answer are returned with it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.protocols.model import ZERO_USAGE, Choice, Completion, ToolCall

ENTRY_VERSION = 1
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
    def output_tokens(self) -> int | None:
        tokens = (self.usage or {}).get("completion_tokens")
        return tokens if isinstance(tokens, int) else None

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.message.get("tool_calls") or self.message.get("function_call"))


def answer_from_completion(completion: Completion, tenant: str, scope: str) -> CachedAnswer | None:
    """The entry for a complete answer, or None when it must not be cached: several choices, no
    finish reason, or one that says the answer is not whole (cut at max_tokens, filtered)."""
    if len(completion.choices) != 1:
        return None
    choice = completion.choices[0]
    if choice.finish_reason not in ("stop", "tool_calls"):
        return None
    message: dict[str, Any] = {"role": "assistant", "content": choice.text}
    if choice.refusal:
        message["refusal"] = choice.refusal
    if choice.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in choice.tool_calls
        ]
    return CachedAnswer(
        tenant=tenant,
        scope=scope,
        model=completion.model,
        message=message,
        finish_reason=choice.finish_reason,
        citations=completion.citations,
        usage=None if completion.usage is None else completion.usage.chat(),
    )


def replay(answer: CachedAnswer, model: str) -> Completion:
    """The cached answer as a new completion: new id and time, zero usage, the asker's model name."""
    message = answer.message
    calls = [
        ToolCall(
            str(c.get("id") or ""),
            str((c.get("function") or {}).get("name") or ""),
            str((c.get("function") or {}).get("arguments") or ""),
        )
        for c in message.get("tool_calls") or ()
        if isinstance(c, dict)
    ]
    choice = Choice(
        0,
        text=message.get("content") if isinstance(message.get("content"), str) else None,
        refusal=message.get("refusal") if isinstance(message.get("refusal"), str) else None,
        tool_calls=calls,
        finish_reason=answer.finish_reason,
    )
    return Completion(
        "chatcmpl-cache-" + uuid.uuid4().hex[:24],
        model,
        int(time.time()),
        [choice],
        ZERO_USAGE,
        answer.citations,
    )
