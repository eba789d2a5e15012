"""The stages of the chain, one module each, in the order a request meets them.

auth/tenant runs first and is fixed (it decides which tenant's chain runs at all); the rest are
built per tenant from its policy by `build_stages`, and the upstream call closes the chain.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.chain import Stage
from gateway.policy import Policy
from gateway.services import Services
from middleware import (
    admission,
    cache,
    file_search,
    input_guardrails,
    output_guardrails,
    refusal,
    retrieval,
)

# Each entry builds its stage from the tenant's policy, or returns None when the policy turns it off.
# The order is the order a request meets them on its way to the upstream.
STAGE_BUILDERS: tuple[Callable[[Policy, Services], Stage | None], ...] = (
    # Limits, budgets and accounting first: overload is shed before any work, and every answer
    # (a cache hit or a refusal included) is counted on its way out.
    admission.build,
    input_guardrails.build,
    # Output guardrails wrap everything after them, so they see the final answer (cached or not).
    output_guardrails.build,
    # A hit skips retrieval and the upstream; entries are keyed on the tenant's corpus version.
    cache.build,
    # The Responses API's file_search tool searches the stores the client names; the policy's
    # retrieval then stands aside for that request.
    file_search.build,
    retrieval.build,
    refusal.build,
)


FILE_SEARCH = file_search.build

# Embeddings are accounted and limited too; the chat-only stages do not apply to them.
EMBEDDING_STAGE_BUILDERS: tuple[Callable[[Policy, Services], Stage | None], ...] = (admission.build,)


def build_embedding_stages(policy: Policy, services: Services) -> list[Stage]:
    return [stage for build in EMBEDDING_STAGE_BUILDERS if (stage := build(policy, services)) is not None]


def build_stages(policy: Policy, services: Services, *, file_search: bool = False) -> list[Stage]:
    """The tenant's chain. `file_search`: the chain of requests that carry the Responses API's
    file_search tool; every other request gets the chain without that stage, so it pays no pass,
    span or timing entry for a tool it did not send."""
    stages: list[Stage] = []
    for build in STAGE_BUILDERS:
        if build is FILE_SEARCH and not file_search:
            continue
        stage = build(policy, services)
        if stage is not None:
            stages.append(stage)
    return stages
