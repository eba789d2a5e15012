"""The stages of the chain, one module each, in the order a request meets them.

auth/tenant runs first and is fixed (it decides which tenant's chain runs at all); the rest are
built per tenant from its policy by `build_stages`, and the upstream call closes the chain.
"""

from __future__ import annotations

from gateway.chain import Stage
from gateway.policy import Policy
from gateway.services import Services

# Each entry builds its stage from the tenant's policy, or returns None when the policy turns it off.
STAGE_BUILDERS: tuple = ()


def build_stages(policy: Policy, services: Services) -> list[Stage]:
    stages: list[Stage] = []
    for build in STAGE_BUILDERS:
        stage = build(policy, services)
        if stage is not None:
            stages.append(stage)
    return stages
