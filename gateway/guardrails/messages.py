"""The text parts of chat messages, addressed so a guardrail can rewrite them in place."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TextPart:
    message: int  # index in body["messages"]
    part: int | None  # index in a list content, None for a plain string content
    role: str
    text: str


def text_parts(messages: Sequence[dict[str, Any]], roles: Sequence[str] | None = None) -> Iterator[TextPart]:
    for i, message in enumerate(messages):
        role = str(message.get("role", ""))
        if roles is not None and role not in roles:
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield TextPart(i, None, role, content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    yield TextPart(i, j, role, part["text"])


def replace_parts(body: dict[str, Any], replacements: dict[tuple[int, int | None], str]) -> dict[str, Any]:
    """A copy of the request with the given parts' text replaced (the caller's body is not mutated)."""
    if not replacements:
        return body
    messages = list(body["messages"])
    for (i, j), text in replacements.items():
        message = dict(messages[i])
        if j is None:
            message["content"] = text
        else:
            content = list(message["content"])
            content[j] = {**content[j], "text": text}
            message["content"] = content
        messages[i] = message
    return {**body, "messages": messages}
