"""refusal: when retrieval confidence is below the tenant's bar, refuse, warn, or let it pass.

`refuse` answers with the tenant's refusal text as a normal chat completion (JSON or SSE, as the
client asked), header `x-gateway-refused: low_confidence`, no upstream call and zero cost.
`warn` forwards and tells the model to state its uncertainty. `passthrough` only records it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from gateway.chain import Handler
from gateway.context import RequestContext
from gateway.policy import Policy, RetrievalPolicy
from gateway.response import GatewayResponse
from gateway.services import Services
from gateway.sse import DONE_EVENT, encode_event
from middleware.retrieval import NAME as RETRIEVAL
from middleware.retrieval import RetrievalOutcome, inject

NAME = "refusal"


def refusal_completion(ctx: RequestContext, text: str) -> GatewayResponse:
    completion_id = "chatcmpl-refused-" + uuid.uuid4().hex[:20]
    created = int(time.time())
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if ctx.stream:
        include_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))
        return GatewayResponse(
            stream=_refusal_stream(completion_id, created, ctx.model, text, usage if include_usage else None)
        )
    return GatewayResponse.of_json(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": ctx.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage,
            "citations": [],
        }
    )


async def _refusal_stream(
    completion_id: str, created: int, model: str, text: str, usage: dict[str, int] | None
) -> AsyncIterator[bytes]:
    base: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    yield encode_event(
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}],
        }
    )
    yield encode_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage is not None:
        yield encode_event({**base, "choices": [], "usage": usage})
    yield encode_event({**base, "choices": [], "citations": []})
    yield DONE_EVENT


class RefusalStage:
    name = NAME

    def __init__(self, settings: RetrievalPolicy) -> None:
        self.settings = settings

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        outcome: RetrievalOutcome | None = ctx.state.get(RETRIEVAL)
        if outcome is None:
            return await call_next(ctx)
        confidence = outcome.result.confidence
        threshold = self.settings.min_confidence
        if confidence >= threshold:
            ctx.decide(NAME, "allow", confidence=round(confidence, 4), threshold=threshold)
            return await call_next(ctx)
        action = self.settings.on_low_confidence
        ctx.decide(NAME, action, confidence=round(confidence, 4), threshold=threshold)
        if action == "refuse":
            outcome.refused = True
            ctx.response_headers["x-gateway-refused"] = "low_confidence"
            return refusal_completion(ctx, self.settings.refusal_message)
        if action == "warn":
            ctx.response_headers["x-gateway-warning"] = "low_confidence"
            ctx.body = inject(ctx.body, self.settings.uncertainty_note)
        return await call_next(ctx)


def build(policy: Policy, services: Services) -> RefusalStage | None:
    return RefusalStage(policy.retrieval) if policy.retrieval.enabled else None
