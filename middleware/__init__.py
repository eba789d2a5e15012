"""The stages of the chain, one module each, in the order a request meets them.

auth/tenant runs first and is fixed (it decides which tenant's chain runs at all); the rest are
built per tenant from its policy by `build_stages`, and the upstream call closes the chain.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.chain import Stage
from gateway.policy import Policy
from gateway.services import Services
from middleware import budget, cache, input_guardrails, output_guardrails, rate_limit, refusal, retrieval

# Each entry builds its stage from the tenant's policy, or returns None when the policy turns it off.
# The order is the order a request meets them on its way to the upstream.
STAGE_BUILDERS: tuple[Callable[[Policy, Services], Stage | None], ...] = (
    # Limits and budgets first, side by side: overload is shed before any work, and the two
    # stages share one state round trip.
    rate_limit.build,
    budget.build,
    input_guardrails.build,
    # Output guardrails wrap everything after them, so they see the final answer (cached or not).
    output_guardrails.build,
    # A hit skips retrieval and the upstream; entries are keyed on the tenant's corpus version.
    cache.build,
    retrieval.build,
    refusal.build,
)


def build_stages(policy: Policy, services: Services) -> list[Stage]:
    stages: list[Stage] = []
    for build in STAGE_BUILDERS:
        stage = build(policy, services)
        if stage is not None:
            stages.append(stage)
    return stages
