"""auth/tenant: find the tenant from the API key, and check it may use the requested model."""

from __future__ import annotations

from gateway.errors import GatewayError
from gateway.policy import KeyOwner, Policy, PolicySnapshot

NAME = "auth"


def presented_key(headers: dict[str, str]) -> str | None:
    """The key from `Authorization: Bearer <key>` or the `api-key` header Azure clients send."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("api-key")
    return key.strip() if key and key.strip() else None


def authenticate(headers: dict[str, str], snapshot: PolicySnapshot) -> tuple[KeyOwner, Policy]:
    key = presented_key(headers)
    if key is None:
        raise GatewayError(
            401,
            "You didn't provide an API key. "
            "Send it as 'Authorization: Bearer <key>' (or the 'api-key' header).",
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


def check_model(policy: Policy, model: str, known: bool) -> None:
    # The same answer whether the model exists for another tenant or not at all: nothing leaks.
    if not known or not policy.allows_model(model):
        raise GatewayError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            type="invalid_request_error",
            code="model_not_found",
            param="model",
        )


def _redact(key: str) -> str:
    return key[:3] + "*" * 4 + key[-4:] if len(key) > 10 else "****"
