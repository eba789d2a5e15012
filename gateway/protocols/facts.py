"""What accounting, metrics and tracing need to know about an answer, whatever its protocol.

Gathered by the admission stage: from a JSON answer, from the internal events of a stream a stage
decoded, or by a protocol's `StreamTap` from the bytes of a stream relayed untouched (which
parses only the events that carry these facts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.errors import GatewayError
from gateway.protocols.model import (
    ChoiceEnd,
    Completion,
    CompletionBuilder,
    Event,
    Events,
    Start,
    TextDelta,
    ToolArgumentsDelta,
    Usage,
    UsageReport,
)


@dataclass(slots=True)
class AnswerFacts:
    id: str | None = None
    model: str | None = None  # as the upstream named it
    finish_reasons: list[str] = field(default_factory=list)
    usage: Usage | None = None
    first_output: float | None = None  # perf_counter() of the first generated text
    output_events: int = 0  # generated-text events after the first (time per output chunk)

    def mark_output(self) -> None:
        self.first_output = time.perf_counter()

    @classmethod
    def of_completion(cls, completion: Completion) -> AnswerFacts:
        return cls(
            completion.id,
            completion.model,
            [c.finish_reason for c in completion.choices if c.finish_reason],
            completion.usage,
        )

    def see(self, event: Event) -> None:
        """Fold one event of a decoded stream in."""
        if isinstance(event, TextDelta | ToolArgumentsDelta):
            if self.first_output is None:
                self.mark_output()
            else:
                self.output_events += 1
        elif isinstance(event, UsageReport):
            self.usage = event.usage
        elif isinstance(event, ChoiceEnd):
            self.finish_reasons.append(event.reason)
        elif isinstance(event, Start):
            self.id, self.model = event.id, event.model


async def text_of_events(events: Events) -> str:
    """All generated text of a (replayed) stream, tool arguments included; errors end it quietly."""
    builder = CompletionBuilder()
    try:
        async for event in events:
            builder.feed(event)
    except GatewayError:
        pass
    return builder.text_so_far()
