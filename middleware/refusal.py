"""refusal: when retrieval confidence is below the tenant's bar, refuse, warn, or let it pass.

`refuse` answers with the tenant's refusal text as a normal answer (JSON or a stream, in the
client's protocol), header `x-gateway-refused: low_confidence`, no upstream call and zero cost.
`warn` forwards and tells the model to state its uncertainty. `passthrough` only records it.
"""

from __future__ import annotations

import time
import uuid

from gateway.chain import Handler
from gateway.context import RequestContext
from gateway.policy import Policy, RetrievalPolicy
from gateway.protocols.model import ZERO_USAGE, Choice, Completion
from gateway.response import GatewayResponse
from gateway.services import Services

NAME = "refusal"


def refusal_completion(ctx: RequestContext, text: str) -> GatewayResponse:
    completion = Completion(
        id="chatcmpl-refused-" + uuid.uuid4().hex[:20],
        model=ctx.model,
        created=int(time.time()),
        choices=[Choice(0, text=text, finish_reason="stop")],
        usage=ZERO_USAGE,
        citations=[],
    )
    return GatewayResponse.answer(completion, ctx.stream)


class RefusalStage:
    name = NAME

    def __init__(self, settings: RetrievalPolicy) -> None:
        self.settings = settings

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        outcome = ctx.retrieval
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
            ctx.request.add_system(self.settings.uncertainty_note)
        return await call_next(ctx)


def build(policy: Policy, services: Services) -> RefusalStage | None:
    # Without the policy's retrieval, the file_search stage applies the refusal itself: a stage
    # here would cost every other request of the tenant its pass.
    return RefusalStage(policy.retrieval) if policy.retrieval.enabled else None
