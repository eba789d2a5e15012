"""Checks shared by the OpenAI request bodies: clear 400s naming the parameter, unknown fields left alone."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.config import FORBIDDEN_REQUEST_FIELDS
from gateway.errors import bad_request

# No model generates more than this in one answer; a larger cap is a client bug, not a request.
MAX_OUTPUT_TOKENS = 1_048_576
MAX_CHOICES = 128  # OpenAI's own limit for `n`

# Known scalar fields and the JSON types they must have; others pass through untouched.
_NUMBER = (int, float)
FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "stream": ((bool,), "a boolean"),
    "n": ((int,), "an integer"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "presence_penalty": (_NUMBER, "a number"),
    "frequency_penalty": (_NUMBER, "a number"),
    "seed": ((int,), "an integer"),
    "logprobs": ((bool,), "a boolean"),
    "top_logprobs": ((int,), "an integer"),
    "stream_options": ((dict,), "an object"),
    "response_format": ((dict,), "an object"),
    "tools": ((list,), "an array"),
    "user": ((str,), "a string"),
    "stop": ((str, list), "a string or an array of strings"),
}


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise bad_request("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(
            f"We could not parse the JSON body of your request ({exc}). Send valid JSON.", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body


def reject_forbidden(body: dict[str, Any]) -> None:
    for name in body.keys() & FORBIDDEN_REQUEST_FIELDS:
        raise bad_request(
            f"'{name}' cannot be set by clients: upstreams and their credentials are configured "
            "in the gateway.",
            param=name,
            code="forbidden_parameter",
        )


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise bad_request(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must be a non-empty string", param="model", code="invalid_type")
    return model


def check_types(body: dict[str, Any]) -> None:
    for name, (types, described) in FIELD_TYPES.items():
        value = body.get(name)
        if value is None:
            continue
        # bool is an int in Python; an integer field must not accept true/false.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise bad_request(
                f"'{name}' must be {described}, got {type(value).__name__}", param=name, code="invalid_type"
            )
    check_bounds(body, "n", 1, MAX_CHOICES)
    for name in ("max_tokens", "max_completion_tokens"):
        check_bounds(body, name, 1, MAX_OUTPUT_TOKENS)
    check_bounds(body, "top_logprobs", 0, 20)


def check_bounds(body: dict[str, Any], name: str, low: int, high: int) -> None:
    """An integer field within [low, high]: absurd values are a 400 naming the field, never an
    overflow further down (a budget estimate, the request log)."""
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(
            f"'{name}' must be an integer, got {type(value).__name__}", param=name, code="invalid_type"
        )
    if value < low:
        raise bad_request(f"'{name}' must be at least {low}", param=name, code="invalid_value")
    if value > high:
        raise bad_request(
            f"'{name}' is {value}; the most this gateway accepts is {high}", param=name, code="invalid_value"
        )


def validate_embeddings(body: dict[str, Any]) -> str:
    reject_forbidden(body)
    model = require_model(body)
    value = body.get("input")
    if value is None:
        raise bad_request(
            "you must provide an input parameter", param="input", code="missing_required_parameter"
        )
    ok = isinstance(value, str) or (
        isinstance(value, list)
        and value
        and (
            all(isinstance(v, str) for v in value)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value)
        )
    )
    if not ok:
        raise bad_request(
            "'input' must be a string, an array of strings, or an array of token arrays",
            param="input",
            code="invalid_type",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise bad_request("'dimensions' must be a positive integer", param="dimensions", code="invalid_value")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise bad_request(
            "'encoding_format' must be 'float' or 'base64'", param="encoding_format", code="invalid_value"
        )
    return model
