"""What a request is cached under, and whether it may be cached at all.

Two keys per request, both SHA-256 over a canonical form (sorted keys, fields that do not change
the answer dropped, a lone text part flattened to a string):
- the exact key: tenant, model, corpus version, policy fingerprint and the whole request;
- the scope: the same minus the last user turn. Semantic entries are only compared within one
  scope, so a paraphrase matches only under the same model, system prompt, parameters and
  earlier turns: "and for Zone B?" in one conversation never meets an answer from another.
The last user turn itself is what gets embedded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.cache.settings import CachePolicy

# Fields that do not change what the model answers (transport, accounting, tracing). max_tokens
# only cuts an answer short: a whole answer is served under any cap at least its length.
IGNORED_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "max_tokens",
        "max_completion_tokens",
    }
)


@dataclass(frozen=True, slots=True)
class RequestKeys:
    exact: str  # hex digest
    scope: str  # hex digest; semantic entries match only within it
    query: str | None  # the last user turn's text when the request may use the semantic cache


def _canonical_content(content: Any) -> Any:
    if isinstance(content, list) and len(content) == 1:
        part = content[0]
        if isinstance(part, dict) and part.get("type") == "text" and set(part) == {"type", "text"}:
            return part["text"]
    return content


def _canonical_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    out = {k: v for k, v in message.items() if v is not None}
    if "content" in out:
        out["content"] = _canonical_content(out["content"])
    return out


def canonical_body(body: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in IGNORED_FIELDS and v is not None}
    if out.get("n") == 1:
        del out["n"]
    out["messages"] = [_canonical_message(m) for m in body.get("messages") or []]
    return out


def _digest(kind: bytes, parts: list[str], payload: Any) -> str:
    h = hashlib.sha256(kind)
    for part in parts:
        h.update(b"\x00" + part.encode("utf-8"))
    h.update(b"\x00" + orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()


def text_of(content: Any) -> str | None:
    """Plain text of a message's content; None when it holds anything but text (images, audio)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    return None


def semantic_query(body: dict[str, Any]) -> str | None:
    """The last user turn's text, when a paraphrase of it may be answered from the cache.

    Only when the conversation ends on a text-only user turn and no tools are offered: with tools
    the answer is often a call whose arguments come from the exact wording ("weather in Paris" and
    "weather in Lyon" embed close together), so such requests are cached exactly only.
    """
    if body.get("tools") or body.get("functions"):
        return None
    messages = body.get("messages") or []
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        return None
    text = text_of(messages[-1].get("content"))
    return text.strip() if text and text.strip() else None


def request_keys(
    tenant: str, model: str, corpus_version: int, fingerprint: str, embedder_id: str, body: dict[str, Any]
) -> RequestKeys:
    canonical = canonical_body(body)
    parts = [tenant, model, str(corpus_version), fingerprint]
    exact = _digest(b"exact", parts, canonical)
    scope_body = {**canonical, "messages": canonical["messages"][:-1]}
    scope = _digest(b"scope", [*parts, embedder_id], scope_body)
    return RequestKeys(exact, scope, semantic_query(body))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def uncacheable_reason(body: dict[str, Any], settings: CachePolicy) -> str | None:
    """Why this request must not be answered from (or stored in) the cache, or None."""
    n = _number(body.get("n"))
    if n is not None and n > 1:
        return "n>1"  # several different samples are the point of such a request
    if body.get("logprobs") or body.get("top_logprobs"):
        return "logprobs"  # a replayed stream could not carry them
    if not settings.cache_nondeterministic:
        # Unset means the provider default; a client that sets sampling explicitly wants variety.
        temperature, top_p = _number(body.get("temperature")), _number(body.get("top_p"))
        if (temperature is not None and temperature > 0) or (top_p is not None and top_p < 1):
            return "nondeterministic"
    return None


def cache_control(headers: dict[str, str]) -> set[str]:
    """The request's Cache-Control directives, lower-cased (headers may come in any case)."""
    value = next((v for k, v in headers.items() if k.lower() == "cache-control"), "")
    return {d.strip().split("=", 1)[0].lower() for d in value.split(",") if d.strip()}
