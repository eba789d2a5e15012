"""OpenAI's legacy text completions on both edges: the client's protocol, and the upstream's.

Client side: `{"model", "prompt", ...}` becomes a chat-form request with the prompt as the one
user message (how LiteLLM and OpenAI's own guides map it), and the answer goes back as a
`text_completion` object or its chunks. OpenAI's defaults hold: `max_tokens` is 16 when absent.
What only a real completions model can do (echo, suffix, best_of, logprobs, several prompts,
token-id prompts) is in `GatewayRequest.native_only`: refused with a 400 naming the field on a
translated call, relayed untouched to a deployment that serves /v1/completions itself.

Upstream side: a deployment that speaks completions natively gets the client's own body with the
stages' edits replayed (instructions they add go before the prompt, redactions into it); a chat
client's request for a completions-only deployment is rendered as one prompt text.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from gateway.edge import ErrorReport, ModelKind, OpenAIErrors
from gateway.errors import GatewayError, bad_request, unsupported
from gateway.protocols import chat
from gateway.protocols.model import (
    ZERO_USAGE,
    Choice,
    ChoiceEnd,
    Citations,
    Completion,
    Events,
    RefusalDelta,
    Start,
    TextDelta,
    Usage,
    UsageReport,
)
from gateway.protocols.request import GatewayRequest, text_of
from gateway.protocols.sse import DONE_EVENT, encode_event, iter_json
from gateway.validation import check_types, reject_forbidden, require_model

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.policy import Policy

NAME = "completions"
DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for this endpoint
# Fields that reach a chat upstream unchanged (the rest of the translation is in `decode_request`).
PASSED_ON = (
    "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty", "logit_bias",
    "seed", "user", "stream", "stream_options",
)  # fmt: skip
TRANSLATED = frozenset({"model", "prompt", "max_tokens", "echo", "suffix", "best_of", "logprobs", *PASSED_ON})


def new_id() -> str:
    return "cmpl-" + uuid.uuid4().hex[:24]


# -- the client's request ------------------------------------------------------------------------


def _prompt_text(prompt: Any, native_only: dict[str, str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            if len(prompt) > 1:
                native_only["prompt"] = "several prompts in one call (each is its own completion)"
            return prompt[0]
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt) or all(
            isinstance(p, list) for p in prompt
        ):
            native_only["prompt"] = "prompts given as token ids (they belong to one model's tokenizer)"
            return ""
    raise bad_request(
        "'prompt' must be a string, an array of strings, or an array of token ids",
        param="prompt",
        code="invalid_type",
    )


def decode_request(body: dict[str, Any]) -> GatewayRequest:
    reject_forbidden(body)
    model = require_model(body)
    if "prompt" not in body:
        raise bad_request(
            "you must provide a prompt parameter", param="prompt", code="missing_required_parameter"
        )
    check_types({k: v for k, v in body.items() if k != "logprobs"})
    native_only: dict[str, str] = {}
    for name in body.keys() - TRANSLATED:
        native_only[name] = "a completions field with no chat completions equivalent"
    prompt = _prompt_text(body["prompt"], native_only)
    if body.get("echo"):
        native_only["echo"] = "echoing the prompt back needs a model that scores the prompt itself"
    if body.get("suffix"):
        native_only["suffix"] = "insertion (text after the completion) needs a completions model"
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        native_only["best_of"] = "best_of picks among candidates by log probability, which chat cannot report"
    logprobs = body.get("logprobs")
    if logprobs is not None and logprobs is not False:
        if not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= 5:
            raise bad_request(
                "'logprobs' must be an integer from 0 to 5", param="logprobs", code="invalid_value"
            )
        native_only["logprobs"] = "per-token log probabilities of a completions model"
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    elif max_tokens < 1:
        raise bad_request("'max_tokens' must be at least 1", param="max_tokens", code="invalid_value")
    chat_body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }
    for name in PASSED_ON:
        if body.get(name) is not None:
            chat_body[name] = body[name]
    request = GatewayRequest(chat_body, NAME, native=body)
    request.native_only = native_only
    return request


# -- the client's answer -------------------------------------------------------------------------


def encode_json(completion: Completion) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion.id if completion.id.startswith("cmpl-") else new_id(),
        "object": "text_completion",
        "created": completion.created,
        "model": completion.model,
        "choices": [
            {
                "index": c.index,
                "text": (c.text or "") + (c.refusal or ""),
                "logprobs": None,
                "finish_reason": _finish(c.finish_reason),
            }
            for c in completion.choices
        ],
        "usage": (completion.usage or ZERO_USAGE).chat(),
    }
    if completion.citations is not None:
        body["citations"] = completion.citations
    return body


def _finish(reason: str | None) -> str:
    # The schema knows stop, length and content_filter; a tool call cannot come from a prompt.
    return reason if reason in ("length", "content_filter") else "stop"


async def encode_stream(events: Events, request: GatewayRequest, report: ErrorReport) -> AsyncIterator[bytes]:
    base: dict[str, Any] = {"id": new_id(), "object": "text_completion", "created": int(time.time())}
    base["model"] = request.model

    def chunk(index: int, text: str, finish: str | None = None) -> bytes:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        return encode_event({**base, "choices": [choice]})

    try:
        async for event in events:
            if isinstance(event, TextDelta | RefusalDelta):
                yield chunk(event.choice, event.text)
            elif isinstance(event, Start):
                base.update(created=event.created, model=event.model or request.model)
            elif isinstance(event, ChoiceEnd):
                yield chunk(event.choice, "", _finish(event.reason))
            elif isinstance(event, UsageReport):
                if request.client_wants_usage:
                    yield encode_event({**base, "choices": [], "usage": event.usage.chat()})
            elif isinstance(event, Citations):
                yield encode_event({**base, "choices": [], "citations": event.citations})
    except GatewayError as error:
        report(error)
        yield chat.error_event(error)
        return
    yield DONE_EVENT


class CompletionsClient(OpenAIErrors):
    name = NAME
    model_kind: ModelKind = "chat"

    async def decode(self, body: dict[str, Any], headers: dict[str, str], policy: Policy) -> GatewayRequest:
        return decode_request(body)

    async def encode_json(self, completion: Completion, ctx: RequestContext) -> bytes:
        return orjson.dumps(encode_json(completion))

    def encode_stream(self, events: Events, ctx: RequestContext, report: ErrorReport) -> AsyncIterator[bytes]:
        return encode_stream(events, ctx.request, report)


# -- the upstream's request ----------------------------------------------------------------------


def upstream_body(request: GatewayRequest, upstream_model: str) -> dict[str, Any]:
    if request.protocol == NAME and request.native is not None:
        body = dict(request.native)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            body["prompt"] = _with_added(request, request.rewritten(prompt))
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            body["prompt"] = [_with_added(request, request.rewritten(p)) for p in prompt]
        elif request.system_added:
            raise unsupported(
                "prompt",
                "this tenant's policy adds instructions to the prompt, which cannot be done to a "
                "prompt given as token ids; send the prompt as text",
            )
        body.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    else:
        body = _from_chat(request)
    body["model"] = upstream_model
    if body.get("stream"):
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return body


def _with_added(request: GatewayRequest, prompt: str) -> str:
    added = "\n\n".join(request.system_added)
    return f"{added}\n\n{prompt}" if added else prompt


def _from_chat(request: GatewayRequest) -> dict[str, Any]:
    """A conversation as one prompt for a deployment that serves only /v1/completions."""
    body = request.body
    for name in ("tools", "response_format", "logprobs"):
        if body.get(name) not in (None, False, []):
            raise unsupported(
                name,
                f"'{name}' is not supported for model '{request.model}': its deployment serves only "
                "legacy completions, which have no equivalent.",
            )
    lines = []
    for message in request.messages:
        role = str(message.get("role") or "user")
        lines.append(f"{role.capitalize()}: {text_of(message.get('content'))}")
    lines.append("Assistant:")
    out: dict[str, Any] = {"prompt": "\n\n".join(lines)}
    cap = request.max_output_tokens()
    out["max_tokens"] = cap if cap is not None else DEFAULT_MAX_TOKENS
    for name in PASSED_ON:
        if body.get(name) is not None:
            out[name] = body[name]
    return out


# -- the upstream's answer -----------------------------------------------------------------------


def usage_of_body(data: dict[str, Any]) -> Usage | None:
    return chat.usage_of(data.get("usage"))


def decode_json(data: dict[str, Any]) -> Completion:
    choices = []
    for position, raw in enumerate(data.get("choices") or ()):
        if not isinstance(raw, dict):
            continue
        index = raw.get("index")
        finish = raw.get("finish_reason")
        choices.append(
            Choice(
                index=index if isinstance(index, int) else position,
                text=str(raw.get("text") or ""),
                finish_reason=finish if isinstance(finish, str) else None,
                logprobs=raw.get("logprobs"),
            )
        )
    created = data.get("created")
    return Completion(
        id=str(data.get("id") or new_id()),
        model=str(data.get("model") or ""),
        created=created if isinstance(created, int) else int(time.time()),
        choices=choices or [Choice(0)],
        usage=chat.usage_of(data.get("usage")),
    )


async def decode_stream(chunks: AsyncIterator[bytes]) -> Events:
    started = False
    async for data in iter_json(chunks):
        chat.raise_reported_error(data)
        if not started:
            started = True
            created = data.get("created")
            yield Start(
                str(data.get("id") or new_id()),
                str(data.get("model") or ""),
                created if isinstance(created, int) else int(time.time()),
            )
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if choice.get("text"):
                yield TextDelta(str(choice["text"]), index, choice.get("logprobs"))
            if choice.get("finish_reason"):
                yield ChoiceEnd(str(choice["finish_reason"]), index)
        usage = chat.usage_of(data.get("usage"))
        if usage is not None:
            yield UsageReport(usage)


class StreamTap(chat.StreamTap):
    """Chat's tap, reading completions chunks: generated text is `"text"`, not `"content"`."""

    content_pattern = chat.pattern_for_field("text")

    @staticmethod
    def decoder(chunks: AsyncIterator[bytes]) -> Events:
        return decode_stream(chunks)
