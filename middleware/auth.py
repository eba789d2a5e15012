"""auth/tenant: find the tenant from the API key, and check it may use the requested model.

Runs before the chain (it decides which tenant's chain runs at all). Each protocol says where its
clients put the key: OpenAI clients send `Authorization: Bearer` (Azure ones `api-key`), Anthropic
clients `x-api-key` (or a bearer token).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from gateway.errors import GatewayError
from gateway.policy import KeyOwner, Policy, PolicySnapshot

NAME = "auth"


def _bearer(headers: dict[str, str]) -> str | None:
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _header(headers: dict[str, str], name: str) -> str | None:
    value = headers.get(name)
    return value.strip() if value and value.strip() else None


def bearer_or_api_key(headers: dict[str, str]) -> str | None:
    """The key from `Authorization: Bearer <key>` or the `api-key` header Azure clients send."""
    return _bearer(headers) or _header(headers, "api-key")


def x_api_key_or_bearer(headers: dict[str, str]) -> str | None:
    """The key as Anthropic clients send it (`x-api-key`), or a bearer token (Claude Code's gateway mode)."""
    return _header(headers, "x-api-key") or _bearer(headers)


def authenticate(key: str | None, snapshot: PolicySnapshot, hint: str) -> tuple[KeyOwner, Policy]:
    if key is None:
        raise GatewayError(
            401,
            f"You didn't provide an API key. {hint}",
            type="invalid_request_error",
            code="invalid_api_key",
        )
    owner = snapshot.owner_of(key)
    policy = snapshot.policies.get(owner.tenant) if owner is not None else None
    if owner is None or policy is None:
        raise GatewayError(
            401,
            f"Incorrect API key provided: {_redact(key)}. Check the key your gateway operator gave you.",
            type="invalid_request_error",
            code="invalid_api_key",
        )
    return owner, policy


def check_model(policy: Policy, model: str, known: bool, usable: Iterable[str]) -> None:
    """404 model_not_found, the same whether the model exists for another tenant or not at all, with
    a suggestion taken only from the models this tenant may use (`usable`), so nothing leaks."""
    if known and policy.allows_model(model):
        return
    close = difflib.get_close_matches(model, list(usable), n=1, cutoff=0.6)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    raise GatewayError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.{hint}",
        type="invalid_request_error",
        code="model_not_found",
        param="model",
    )


def _redact(key: str) -> str:
    return key[:3] + "*" * 4 + key[-4:] if len(key) > 10 else "****"
