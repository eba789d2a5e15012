"""The internal form of an answer: one typed event stream and one completed answer.

Every protocol the gateway speaks (OpenAI chat completions, the Responses API, legacy
completions, Anthropic Messages) decodes into these on the way in and encodes out of them at the
edge, so a stage that looks at an answer is written once, whichever door the request came in by
and whichever upstream answered. Stages never see wire bytes; when none of them needs to look,
the bytes are relayed untouched and nothing here is built.

A stream is an async iterator of the events below. It ends cleanly by being exhausted; a failure
(mid-stream included) is raised as a `gateway.errors.GatewayError`, which each protocol renders in
its own shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

# The internal finish reasons are chat completions' names; each protocol maps its own.
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def chat(self) -> dict[str, Any]:
        """As chat completions report it."""
        usage: dict[str, Any] = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_input_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_input_tokens}
        if self.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


ZERO_USAGE = Usage(0, 0)


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(slots=True)
class Choice:
    """One generated answer (chat completions' `n` gives several; every other protocol has one)."""

    index: int = 0
    text: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: Any = None


@dataclass(slots=True)
class FileSearchCall:
    """A search the gateway ran for the client's `file_search` tool, before the model answered (the
    Responses API shows it as a `file_search_call` output item; chat has no place for it)."""

    id: str
    queries: list[str]
    results: list[dict[str, Any]] | None  # OpenAI's result shape, when the client asked to include them


@dataclass(slots=True)
class Completion:
    id: str
    model: str  # the public model name the client asked for
    created: int
    choices: list[Choice]
    usage: Usage | None = None
    citations: list[dict[str, Any]] | None = None  # the retrieval stage's sources, as cited
    searches: list[FileSearchCall] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c.text or "" for c in self.choices)


# -- stream events ------------------------------------------------------------------------------


@dataclass(slots=True)
class Start:
    """The first event of every stream: what the answer is called."""

    id: str
    model: str
    created: int


@dataclass(slots=True)
class TextDelta:
    text: str
    choice: int = 0
    logprobs: Any = None


@dataclass(slots=True)
class RefusalDelta:
    text: str
    choice: int = 0


@dataclass(slots=True)
class ToolCallStart:
    call: int  # the call's position within its choice
    id: str
    name: str
    choice: int = 0


@dataclass(slots=True)
class ToolArgumentsDelta:
    call: int
    arguments: str
    choice: int = 0


@dataclass(slots=True)
class ChoiceEnd:
    reason: str
    choice: int = 0


@dataclass(slots=True)
class UsageReport:
    usage: Usage


@dataclass(slots=True)
class Citations:
    citations: list[dict[str, Any]]


Event = (
    Start
    | FileSearchCall
    | TextDelta
    | RefusalDelta
    | ToolCallStart
    | ToolArgumentsDelta
    | ChoiceEnd
    | UsageReport
    | Citations
)
Events = AsyncIterator[Event]


class CompletionBuilder:
    """Folds a stream's events into the answer they spell (for the cache, the log, stored responses)."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = 0
        self.choices: dict[int, Choice] = {}
        self.usage: Usage | None = None
        self.citations: list[dict[str, Any]] | None = None
        self.searches: list[FileSearchCall] = []
        self._arguments: dict[tuple[int, int], list[str]] = {}
        self._texts: dict[int, list[str]] = {}

    def _choice(self, index: int) -> Choice:
        choice = self.choices.get(index)
        if choice is None:
            choice = self.choices[index] = Choice(index)
        return choice

    def feed(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self._texts.setdefault(event.choice, []).append(event.text)
        elif isinstance(event, ToolArgumentsDelta):
            self._arguments.setdefault((event.choice, event.call), []).append(event.arguments)
        elif isinstance(event, Start):
            self.id, self.model, self.created = event.id, event.model, event.created
        elif isinstance(event, ToolCallStart):
            calls = self._choice(event.choice).tool_calls
            while len(calls) <= event.call:
                calls.append(ToolCall("", "", ""))
            calls[event.call] = ToolCall(event.id, event.name, "")
        elif isinstance(event, RefusalDelta):
            choice = self._choice(event.choice)
            choice.refusal = (choice.refusal or "") + event.text
        elif isinstance(event, ChoiceEnd):
            self._choice(event.choice).finish_reason = event.reason
        elif isinstance(event, UsageReport):
            self.usage = event.usage
        elif isinstance(event, Citations):
            self.citations = event.citations
        elif isinstance(event, FileSearchCall):
            self.searches.append(event)

    def text_so_far(self) -> str:
        """Everything generated, tool arguments included (what a tokenizer should count)."""
        pieces = ["".join(parts) for parts in self._texts.values()]
        pieces += ["".join(parts) for parts in self._arguments.values()]
        return "".join(pieces)

    def build(self) -> Completion:
        for index, parts in self._texts.items():
            self._choice(index).text = "".join(parts)
        for (index, call), parts in self._arguments.items():
            calls = self._choice(index).tool_calls
            while len(calls) <= call:
                calls.append(ToolCall("", "", ""))
            calls[call].arguments = "".join(parts)
        choices = [self.choices[i] for i in sorted(self.choices)] or [Choice(0)]
        return Completion(
            self.id, self.model, self.created, choices, self.usage, self.citations, self.searches
        )


async def completion_events(completion: Completion) -> Events:
    """A completed answer as a stream (a cache hit, a refusal or a JSON upstream answer replayed)."""
    yield Start(completion.id, completion.model, completion.created)
    for search in completion.searches:
        yield search
    for choice in completion.choices:
        if choice.text:
            yield TextDelta(choice.text, choice.index, choice.logprobs)
        if choice.refusal:
            yield RefusalDelta(choice.refusal, choice.index)
        for position, call in enumerate(choice.tool_calls):
            yield ToolCallStart(position, call.id, call.name, choice.index)
            if call.arguments:
                yield ToolArgumentsDelta(position, call.arguments, choice.index)
        yield ChoiceEnd(choice.finish_reason or "stop", choice.index)
    if completion.usage is not None:
        yield UsageReport(completion.usage)
    if completion.citations is not None:
        yield Citations(completion.citations)
