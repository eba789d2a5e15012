"""The client side of each protocol, as the proxy uses it: auth, decode, encode, errors.

A `ClientProtocol` turns a client's body into the internal request, an internal answer (a
completion or an event stream) into the client's wire format, and any `GatewayError` into the
protocol's own envelope: as a response before anything was sent, as an error event after. An
upstream answer already in the client's protocol goes through `relay_json` / `relay_stream`,
which pass the bytes on (a protocol with server-side state, the Responses API, also keeps what it
must store). The proxy itself never knows which protocol it is serving.

Each protocol's client lives in its own module under `gateway.protocols`; the OpenAI ones that
need nothing beyond their codec are here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from gateway.errors import GatewayError
from gateway.protocols import chat, embeddings
from gateway.protocols.model import Completion, Events
from gateway.protocols.request import GatewayRequest
from middleware.auth import bearer_or_api_key

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.policy import Policy

ErrorReport = Callable[[GatewayError], None]
ModelKind = Literal["chat", "embedding"]


class ClientProtocol(Protocol):
    name: str  # the wire protocol: a relayed upstream answer in it goes out untouched
    model_kind: ModelKind
    key_hint: str  # how to send the key, for the 401 message

    def presented_key(self, headers: dict[str, str]) -> str | None: ...

    async def decode(self, body: dict[str, Any], headers: dict[str, str], policy: Policy) -> GatewayRequest:
        """The internal request, or a GatewayError naming what to fix."""
        ...

    async def encode_json(self, completion: Completion, ctx: RequestContext) -> bytes: ...

    def encode_stream(self, events: Events, ctx: RequestContext, report: ErrorReport) -> AsyncIterator[bytes]:
        """The stream in the client's protocol. A GatewayError raised by `events` is reported and
        rendered as the protocol's error event; the stream never ends quietly on a failure."""
        ...

    async def relay_json(self, raw: bytes, ctx: RequestContext) -> bytes:
        """An upstream answer in this protocol, as the client gets it."""
        ...

    def relay_stream(self, chunks: AsyncIterator[bytes], ctx: RequestContext) -> AsyncIterator[bytes]: ...

    def error_response(self, error: GatewayError) -> tuple[int, bytes]: ...

    def stream_error(self, error: GatewayError) -> bytes: ...


class OpenAIErrors:
    """OpenAI's envelope: {"error": {"message", "type", "param", "code"}}, the status as is."""

    key_hint = "Send it as 'Authorization: Bearer <key>' (or the 'api-key' header)."

    def presented_key(self, headers: dict[str, str]) -> str | None:
        return bearer_or_api_key(headers)

    def error_response(self, error: GatewayError) -> tuple[int, bytes]:
        return error.status, error.body()

    def stream_error(self, error: GatewayError) -> bytes:
        return chat.error_event(error)

    async def relay_json(self, raw: bytes, ctx: RequestContext) -> bytes:
        return raw

    def relay_stream(self, chunks: AsyncIterator[bytes], ctx: RequestContext) -> AsyncIterator[bytes]:
        return chunks


class ChatClient(OpenAIErrors):
    name = "chat"
    model_kind: ModelKind = "chat"

    async def decode(self, body: dict[str, Any], headers: dict[str, str], policy: Policy) -> GatewayRequest:
        return chat.decode_request(body)

    async def encode_json(self, completion: Completion, ctx: RequestContext) -> bytes:
        return orjson.dumps(chat.encode_json(completion, ctx.request))

    def encode_stream(self, events: Events, ctx: RequestContext, report: ErrorReport) -> AsyncIterator[bytes]:
        return chat.encode_stream(events, ctx.request, report)


class EmbeddingsClient(OpenAIErrors):
    name = "embeddings"
    model_kind: ModelKind = "embedding"

    async def decode(self, body: dict[str, Any], headers: dict[str, str], policy: Policy) -> GatewayRequest:
        return embeddings.decode_request(body)

    async def encode_json(self, completion: Completion, ctx: RequestContext) -> bytes:
        raise AssertionError("embeddings are relayed as the upstream sent them")

    def encode_stream(self, events: Events, ctx: RequestContext, report: ErrorReport) -> AsyncIterator[bytes]:
        raise AssertionError("embeddings do not stream")
