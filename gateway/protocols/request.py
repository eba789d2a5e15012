"""The internal request: chat completions' schema, whichever protocol the client spoke.

Chat completions is the form every stage reads (messages with roles and content parts, tools,
sampling parameters), because every upstream we route to can be reached in it. A request that came
in as a Responses or Messages call is translated into it once, at the edge, and keeps its original
body in `native`: when the chosen deployment speaks that protocol itself, the original is relayed
instead, with the stages' edits replayed onto it. Stages therefore change a request only through
the methods here (`add_system`, `replace_texts`, `set_model`), which record each edit in a form
every protocol can apply, never by rewriting the dict.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Protocol = Literal["chat", "responses", "messages", "completions", "embeddings"]


@dataclass(frozen=True, slots=True)
class TextPart:
    """A piece of message text, addressed so a stage can rewrite it in place."""

    message: int  # index in messages
    part: int | None  # index in a list content, None for a plain string content
    role: str
    text: str


def text_of(content: Any) -> str:
    """The text of a message's content (a string or content parts); other parts are skipped."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def iter_text_parts(
    messages: Sequence[Mapping[str, Any]], roles: Sequence[str] | None = None
) -> Iterator[TextPart]:
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


@dataclass(frozen=True, slots=True)
class FileSearchTool:
    """The Responses API's `file_search` tool: run by the gateway against the tenant's own vector
    stores before the upstream call (the upstream sees the numbered sources, never the tool)."""

    vector_store_ids: tuple[str, ...]
    max_num_results: int
    filters: dict[str, Any] | None
    score_threshold: float
    include_results: bool  # `include: ["file_search_call.results"]`


class GatewayRequest:
    """One request on its way through the chain. `body` is read-only for stages."""

    __slots__ = (
        "_system_added",
        "body",
        "client_wants_usage",
        "file_search",
        "model",
        "native",
        "native_only",
        "origin",
        "protocol",
        "relay_headers",
        "stream",
        "text_rewrites",
    )

    def __init__(
        self,
        body: dict[str, Any],
        protocol: Protocol = "chat",
        native: dict[str, Any] | None = None,
    ) -> None:
        self.body = body
        self.protocol: Protocol = protocol
        self.native = native  # the client's own body, for a deployment that speaks its protocol
        # The decoding protocol's own record of the call (the Responses API's stored-response
        # settings, say): read only by that protocol's module, never by a stage.
        self.origin: Any = None
        # Client fields only a deployment speaking the client's own protocol can honour
        # (param -> why): a translated call refuses them with a 400 naming the field, never
        # drops them quietly.
        self.native_only: dict[str, str] = {}
        self.model: str = body.get("model") or ""  # the public model name (a budget downgrade may change it)
        self.stream = bool(body.get("stream"))
        options = body.get("stream_options")
        self.client_wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        # Client headers a native upstream of the same protocol needs (anthropic-version, -beta).
        self.relay_headers: dict[str, str] = {}
        self._system_added: list[str] = []
        self.text_rewrites: dict[str, str] = {}  # original text -> replacement, for native bodies
        self.file_search: FileSearchTool | None = None  # the client's file_search tool, if it gave one

    # -- reading --------------------------------------------------------------------------------

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages") or []

    @property
    def system_added(self) -> tuple[str, ...]:
        """Instructions stages added (sources, notes), in order: what a native body must also get."""
        return tuple(self._system_added)

    def get(self, name: str, default: Any = None) -> Any:
        return self.body.get(name, default)

    def text_parts(self, roles: Sequence[str] | None = None) -> Iterator[TextPart]:
        return iter_text_parts(self.messages, roles)

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return text_of(message.get("content"))
        return ""

    @property
    def edited(self) -> bool:
        return bool(self._system_added or self.text_rewrites) or self.model != self.body.get("model")

    # -- editing (each edit is recorded so a native body can replay it) -------------------------

    def add_system(self, text: str) -> None:
        """Instructions for the model, placed after the client's own system messages."""
        messages = list(self.messages)
        position = 0
        while position < len(messages) and messages[position].get("role") in ("system", "developer"):
            position += 1
        messages.insert(position, {"role": "system", "content": text})
        self.body = {**self.body, "messages": messages}
        self._system_added.append(text)

    def replace_texts(self, replacements: Mapping[tuple[int, int | None], str]) -> None:
        """Rewrite the text of the given parts (guardrail redaction); the caller's dict is not mutated."""
        if not replacements:
            return
        messages = list(self.messages)
        for (i, j), text in replacements.items():
            message = dict(messages[i])
            if j is None:
                original = message.get("content")
                message["content"] = text
            else:
                content = list(message["content"])
                original = content[j].get("text")
                content[j] = {**content[j], "text": text}
                message["content"] = content
            if isinstance(original, str) and original != text:
                self.text_rewrites[original] = text
            messages[i] = message
        self.body = {**self.body, "messages": messages}

    def set_model(self, model: str) -> None:
        self.model = model
        self.body = {**self.body, "model": model}

    def set_param(self, name: str, value: Any) -> None:
        self.body = {**self.body, name: value}

    def rewritten(self, text: str) -> str:
        """A native body's text after the stages' rewrites (identical texts get the same rewrite)."""
        return self.text_rewrites.get(text, text) if self.text_rewrites else text

    def check_translatable(self, wire: str) -> None:
        """Raise the 400 for a field that cannot be carried over when the upstream speaks `wire`."""
        if wire != self.protocol and self.native_only:
            from gateway.errors import unsupported

            param, why = next(iter(self.native_only.items()))
            raise unsupported(
                param,
                f"'{param}' is not supported for model '{self.model}': {why} (this model's "
                f"deployment is reached through {wire}, which has no equivalent).",
            )

    # -- what the request may cost ----------------------------------------------------------------

    def max_output_tokens(self) -> int | None:
        asked = self.body.get("max_completion_tokens") or self.body.get("max_tokens")
        return asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else None

    def choices(self) -> int:
        n = self.body.get("n")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
