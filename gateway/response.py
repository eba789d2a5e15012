"""What the chain returns: an answer as wire bytes, decoded into the internal form only on demand.

An upstream's answer starts as bytes in its own protocol (`wire`): a JSON body or an SSE stream.
A stage that needs to look at it asks for `completion()` or `events()`, which decode it once;
a stage that changes it replaces the completion or maps the events, after which the bytes are
stale and the edge encodes the internal form in the client's protocol. When no stage asked and
the client speaks the upstream's protocol, the edge relays the original bytes untouched.
Answers the gateway writes itself (a refusal, a cache hit, the built-in model) are internal from
the start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import UpstreamError
from gateway.protocols import wire_codec
from gateway.protocols.model import Completion, Events, completion_events

INTERNAL = "internal"


@dataclass(slots=True)
class WaitClock:
    """Time a stream spent waiting on its upstream between chunks (not the gateway's overhead)."""

    waited_s: float = 0.0


def invalid_answer(exc: Exception) -> UpstreamError:
    return UpstreamError(
        502,
        f"the upstream's answer is not valid JSON ({exc}); nothing could be checked or cached",
        code="upstream_invalid_response",
    )


@dataclass(slots=True)
class GatewayResponse:
    status: int = 200
    wire: str = "chat"  # the protocol of `raw` / `stream`, or "internal"
    raw: bytes | None = None  # the body exactly as the upstream sent it, until a stage changes it
    stream: AsyncIterator[bytes] | None = None  # SSE bytes exactly as the upstream sends them
    headers: dict[str, str] = field(default_factory=dict)
    wait: WaitClock = field(default_factory=WaitClock)
    _data: dict[str, Any] | None = None
    _completion: Completion | None = None
    _events: Events | None = None
    # Every stream iterator this answer went through, innermost first: closing them all (outermost
    # first) runs each stage's clean-up and releases the upstream connection, however far the
    # client read.
    _layers: list[Any] = field(default_factory=list)

    @classmethod
    def of_completion(cls, completion: Completion, status: int = 200) -> GatewayResponse:
        return cls(status=status, wire=INTERNAL, _completion=completion)

    @classmethod
    def of_events(cls, events: Events) -> GatewayResponse:
        return cls(wire=INTERNAL, _events=events)

    @classmethod
    def answer(cls, completion: Completion, stream: bool) -> GatewayResponse:
        """An answer the gateway wrote itself, as a stream or JSON as the client asked."""
        return cls.of_events(completion_events(completion)) if stream else cls.of_completion(completion)

    @property
    def is_stream(self) -> bool:
        return self.stream is not None or self._events is not None

    @property
    def is_raw(self) -> bool:
        """The wire bytes are still what the client would get for the upstream's protocol."""
        return self.wire != INTERNAL

    # -- JSON answers -------------------------------------------------------------------------

    def json(self) -> dict[str, Any]:
        """The wire body parsed (once); raises a 502 UpstreamError when it is not JSON."""
        if self._data is None:
            try:
                parsed = orjson.loads(self.raw or b"{}")
            except orjson.JSONDecodeError as exc:
                raise invalid_answer(exc) from exc
            self._data = parsed if isinstance(parsed, dict) else {"data": parsed}
        return self._data

    def completion(self) -> Completion:
        """The answer in the internal form (decoded once; reading it keeps the bytes valid)."""
        if self._completion is None:
            self._completion = wire_codec(self.wire).decode_json(self.json())
        return self._completion

    def set_completion(self, completion: Completion) -> None:
        """A stage changed the answer: from now on the edge encodes it instead of relaying bytes."""
        self._completion = completion
        self.raw = None
        self._data = None
        self.wire = INTERNAL

    # -- streams ------------------------------------------------------------------------------

    def events(self) -> Events:
        """The stream as internal events (decoding the wire bytes, once)."""
        if self._events is None:
            assert self.stream is not None, "events() of a JSON answer"
            self._layers.append(self.stream)
            self._events = wire_codec(self.wire).decode_stream(self.stream)
            self.stream = None
            self.wire = INTERNAL
        return self._events

    def map_events(self, transform: Callable[[Events], Events]) -> None:
        events = self.events()
        self._layers.append(events)
        self._events = transform(events)

    def map_bytes(self, transform: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]) -> None:
        """Observe a stream still in wire form without decoding it (accounting's usage tap)."""
        assert self.stream is not None
        self._layers.append(self.stream)
        self.stream = transform(self.stream)

    async def aclose(self) -> None:
        """Stop the stream (returns or drops the upstream connection) and run the stages' clean-up."""
        for iterator in (self._events, self.stream, *reversed(self._layers)):
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
