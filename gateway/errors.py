"""OpenAI-style errors: every failure a client sees is one of these envelopes."""

from __future__ import annotations

import orjson


class VectorStoreUnavailable(RuntimeError):
    """The Chroma server did not answer; the message says what to check.

    Here rather than in gateway.retrieval so the app can name it without importing retrieval.
    """


class EmbeddingUnavailable(RuntimeError):
    """A provider embedding model failed on every deployment; the message names them (no secrets)."""


class GatewayError(Exception):
    """A failure with the status and OpenAI error fields the client should receive."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def envelope(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, type="invalid_request_error", code=code, param=param)


def upstream_error(status: int, message: str, code: str = "upstream_error") -> GatewayError:
    return GatewayError(status, message, type="upstream_error", code=code)


def error_from_upstream_body(status: int, body: bytes) -> GatewayError:
    """Keep an upstream 4xx's own message (the client needs it to fix its request)."""
    message = f"upstream returned HTTP {status}"
    type_, code, param = "invalid_request_error", None, None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        if text:
            message = text[:2000]
    else:
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            type_ = str(err.get("type") or type_)
            code = err.get("code")
            param = err.get("param")
        elif isinstance(err, str):
            message = err
        elif isinstance(data, dict) and "detail" in data:
            message = str(data["detail"])
    if status == 429 and type_ == "invalid_request_error":
        type_ = "rate_limit_error"
    return GatewayError(status, message, type=type_, code=None if code is None else str(code), param=param)
