"""OpenAI embeddings: the request is relayed as sent (with the deployment's model name), and only
its usage is read back, for accounting."""

from __future__ import annotations

from typing import Any

from gateway.protocols.chat import usage_of
from gateway.protocols.model import Usage
from gateway.protocols.request import GatewayRequest
from gateway.validation import validate_embeddings

NAME = "embeddings"


def decode_request(body: dict[str, Any]) -> GatewayRequest:
    validate_embeddings(body)
    return GatewayRequest(body, NAME)


def usage_of_body(data: dict[str, Any]) -> Usage | None:
    usage = data.get("usage")
    if isinstance(usage, dict) and "completion_tokens" not in usage:
        usage = {**usage, "completion_tokens": 0}
    return usage_of(usage)


def input_texts(body: dict[str, Any]) -> list[str]:
    """The strings to embed (token-array inputs have no text to count)."""
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []
