"""The gateway's failures: one hierarchy, rendered by each protocol in its own envelope.

`GatewayError` carries what any protocol needs to describe a failure (HTTP status, OpenAI-style
type and code, the offending parameter). Upstream failures are subclasses of `UpstreamError`, so a
failure before the first byte and one in the middle of a stream are the same kind of thing; the
edge renders either as an error response or as the protocol's error event.

Upstream messages are relayed (the client needs them to fix its request) only after
`scrub_secrets` has removed every configured upstream key and anything shaped like a key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import orjson
from starlette.responses import Response


class VectorStoreUnavailable(RuntimeError):
    """The Chroma server did not answer; the message says what to check.

    Here rather than in gateway.retrieval so the app can name it without importing retrieval.
    """


class PoliciesNotApplicable(RuntimeError):
    """A policy asks for something gateway.yaml does not provide; the message names both settings.

    At start-up the gateway says so in one line and exits; on a hot reload the last good policies
    stay in force."""


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


class UpstreamError(GatewayError):
    """The upstream could not give an answer (after the router's retries and fallbacks)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None,
        type: str = "upstream_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, type=type, code=code, param=param, headers=headers)


class UpstreamTimeout(UpstreamError):
    def __init__(self, message: str) -> None:
        super().__init__(504, message, code="upstream_timeout")


class UpstreamUnavailable(UpstreamError):
    def __init__(
        self,
        message: str,
        status: int = 502,
        *,
        code: str = "upstream_unavailable",
        type: str = "upstream_error",
    ) -> None:
        super().__init__(status, message, code=code, type=type)


class UpstreamRejected(UpstreamError):
    """An upstream 4xx: the request was wrong for it. Its own type, code and param are kept."""


class StreamInterrupted(UpstreamError):
    """The upstream's stream broke, stopped or reported an error after it had started."""

    def __init__(
        self, message: str, *, type: str = "upstream_error", code: str = "stream_interrupted"
    ) -> None:
        super().__init__(502, message, code=code, type=type)


class ClientGone(Exception):
    """The client disconnected before we answered."""


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, type="invalid_request_error", code=code, param=param)


def unsupported(param: str, message: str) -> GatewayError:
    """A field the gateway cannot honour on this path: refused, never silently dropped."""
    return GatewayError(400, message, type="invalid_request_error", code="unsupported_parameter", param=param)


def upstream_error(status: int, message: str, code: str = "upstream_error") -> UpstreamError:
    return UpstreamError(status, message, code=code)


# -- secrets in upstream messages ---------------------------------------------------------------

# Key shapes providers use, including the masked form OpenAI echoes ("sk-proj-****abcd").
_KEY_SHAPES = re.compile(
    r"(?<![A-Za-z0-9_-])(?:sk-ant-[A-Za-z0-9_*-]{8,}|sk-[A-Za-z0-9_*-]{8,}|AIza[0-9A-Za-z_*-]{20,}"
    r"|(?:AKIA|ASIA)[A-Z0-9*]{12,}|gh[pousr]_[A-Za-z0-9*]{20,}|xox[abposre]-[A-Za-z0-9*-]{10,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
)
_BEARER = re.compile(r"(?i)\b(bearer|api[-_ ]?key|x-api-key)([\"':= ]+)([A-Za-z0-9._*~+/-]{12,})")
SCRUBBED = "[redacted]"


def scrub_secrets(text: str, known: Iterable[str] = ()) -> str:
    """The text with configured keys, key-shaped tokens and bearer values replaced by [redacted]."""
    for secret in known:
        if secret and len(secret) >= 6 and secret in text:
            text = text.replace(secret, SCRUBBED)
    text = _KEY_SHAPES.sub(SCRUBBED, text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{SCRUBBED}", text)


def error_from_upstream_body(status: int, body: bytes, secrets: Iterable[str] = ()) -> UpstreamRejected:
    """An upstream 4xx with its own message (the client needs it to fix its request), scrubbed."""
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
    return UpstreamRejected(
        status,
        scrub_secrets(message, secrets),
        type=type_,
        code=None if code is None else str(code),
        param=None if param is None else str(param),
    )


def error_response(error: GatewayError) -> Response:
    """A GatewayError as a Starlette response: its envelope, status and headers."""
    return Response(
        error.body(), status_code=error.status, media_type="application/json", headers=error.headers
    )
