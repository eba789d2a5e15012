"""OpenAI's Responses API on both edges: the client's protocol, and the upstream's.

Client side: a Responses request (input items, instructions, function tools, text.format, ...)
becomes the internal chat-form request once, here; the answer goes back as a Response object or
as the API's typed, sequence-numbered stream events. Responses are stateful (`store`,
`previous_response_id`): the gateway keeps them itself, per tenant, in its state layer, so a
conversation continues whichever upstream answers and whichever replica is asked.

Upstream side: a deployment that speaks the Responses API natively gets the client's own body,
with the stages' edits replayed on it and the stored conversation expanded into `input` (the
upstream never stores anything for us: `store: false`); its JSON and events decode into the
internal form.

What cannot be translated for a chat upstream (built-in tools, file inputs, ...) is recorded in
`GatewayRequest.native_only`: refused with a 400 naming the field on a translated call, relayed
untouched on a native one. The README's Responses table lists every field.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.edge import ErrorReport, ModelKind, OpenAIErrors
from gateway.errors import GatewayError, StreamInterrupted, bad_request, unsupported
from gateway.protocols.facts import AnswerFacts, text_of_events
from gateway.protocols.model import (
    Choice,
    ChoiceEnd,
    Citations,
    Completion,
    Events,
    FileSearchCall,
    RefusalDelta,
    Start,
    TextDelta,
    ToolArgumentsDelta,
    ToolCall,
    ToolCallStart,
    Usage,
    UsageReport,
)
from gateway.protocols.request import FileSearchTool, GatewayRequest
from gateway.protocols.sse import encode_named, event_data, event_name, iter_events, iter_json, replay
from gateway.validation import check_bounds, reject_forbidden, require_model
from gateway.vector_stores import filter_problem, score_threshold

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.policy import Policy
    from gateway.state import StateBackend

NAME = "responses"

# Fields a Responses call may carry, and how each reaches a chat upstream (see `_chat_body`).
TRANSLATED = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
        "max_output_tokens", "temperature", "top_p", "metadata", "user", "stream", "store",
        "previous_response_id", "reasoning", "include", "stream_options", "truncation",
        "service_tier", "safety_identifier", "prompt_cache_key",
    }
)  # fmt: skip
# Never served, whatever the upstream: each needs machinery the gateway does not run.
ALWAYS_REFUSED = {
    "background": "background responses are not run by this gateway; send the request without it",
    "conversation": "the Conversations API is not served here; chain turns with previous_response_id",
    "prompt": "stored prompt templates live on OpenAI's platform; send the prompt text instead",
}
# Input item and tool types that only a native Responses upstream understands.
FUNCTION_TOOL = "function"
FILE_SEARCH_TOOL = "file_search"
GATEWAY_SEARCH_ITEM = "file_search_call"
FILE_SEARCH_RESULTS = "file_search_call.results"  # the `include` value that returns the results
MAX_FILE_SEARCH_STORES = 10
DEFAULT_FILE_SEARCH_RESULTS = 10


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(24).hex()}"


# -- the call as the client made it ------------------------------------------------------------


@dataclass(slots=True)
class ResponsesCall:
    """What the Responses edge must remember about a call: echoed fields and storage settings."""

    store: bool
    ttl_s: int
    previous_response_id: str | None
    input_items: list[dict[str, Any]]  # this turn's input, as items with ids
    history: list[dict[str, Any]]  # the stored conversation before this turn
    echo: dict[str, Any] = field(default_factory=dict)  # request fields a Response repeats


def _message_item(role: str, content: Any) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    parts = [{"type": kind, "text": content}] if isinstance(content, str) else content
    return {"type": "message", "role": role, "content": parts}


def normalize_input(value: Any) -> list[dict[str, Any]]:
    """The `input` as a list of items (a string is one user message), each with an id, as stored."""
    if isinstance(value, str):
        items = [_message_item("user", value)]
    elif isinstance(value, list):
        items = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise bad_request(f"input[{i}] must be an object", param=f"input[{i}]", code="invalid_type")
            kind = item.get("type", "message")
            if kind == "message":
                role = item.get("role")
                if role not in ("user", "assistant", "system", "developer"):
                    raise bad_request(
                        f"input[{i}].role must be one of user, assistant, system, developer",
                        param=f"input[{i}].role",
                        code="invalid_value",
                    )
                content = item.get("content")
                if not isinstance(content, str | list):
                    raise bad_request(
                        f"input[{i}].content must be a string or an array of content parts",
                        param=f"input[{i}].content",
                        code="invalid_type",
                    )
                items.append({**item, **_message_item(role, content)})
            elif not isinstance(kind, str):
                raise bad_request(f"input[{i}].type must be a string", param=f"input[{i}].type")
            else:
                items.append(dict(item))
    else:
        raise bad_request(
            "'input' must be a string or an array of input items", param="input", code="invalid_type"
        )
    for item in items:
        if "id" not in item and item.get("type") == "message":
            item["id"] = new_id("msg")
    return items


def items_to_messages(
    items: list[dict[str, Any]], native_only: dict[str, str], offset: int = 0, param: str = "input"
) -> list[dict[str, Any]]:
    """Responses input items as chat messages; what has no chat form goes into `native_only`."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"{param}[{i - offset}]" if i >= offset else "previous_response_id"
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_chat_message(item, where, native_only))
        elif kind == "function_call":
            for name in ("call_id", "name"):
                if not isinstance(item.get(name), str):
                    raise bad_request(f"{where}.{name} must be a string", param=f"{where}.{name}")
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": str(item.get("arguments") or "")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and last.get("_from_output"):
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise bad_request(f"{where}.call_id must be a string", param=f"{where}.call_id")
            output = item.get("output")
            text = output if isinstance(output, str) else _parts_text(output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind in ("reasoning", GATEWAY_SEARCH_ITEM):
            # The model's own hidden reasoning from an earlier turn: a chat upstream has no place
            # for it, and the conversation reads the same without it (documented as dropped). A
            # file search the gateway ran served that turn's sources; the answer that follows
            # carries what was taken from them.
            continue
        else:
            native_only[f"{where}.type"] = f"input items of type '{kind}' exist only in the Responses API"
    for message in messages:
        message.pop("_from_output", None)
    return messages


def _parts_text(parts: Any) -> str:
    if not isinstance(parts, list):
        return "" if parts is None else str(parts)
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def _chat_message(item: dict[str, Any], where: str, native_only: dict[str, str]) -> dict[str, Any]:
    role = item["role"]
    content = item["content"]
    if role == "assistant":
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("output_text", "input_text", "text"):
                texts.append(str(part.get("text", "")))
            elif kind == "refusal":
                texts.append(str(part.get("refusal", "")))
            else:
                native_only[f"{where}.content[{j}].type"] = f"assistant content of type '{kind}'"
        return {"role": "assistant", "content": "".join(texts), "_from_output": True}
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(
                f"{where}.content[{j}] must be an object with a 'type' (e.g. "
                '{"type": "input_text", "text": "..."})',
                param=f"{where}.content[{j}]",
                code="invalid_type",
            )
        kind = part["type"]
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(part.get("text"), str):
                raise bad_request(
                    f"{where}.content[{j}].text must be a string", param=f"{where}.content[{j}].text"
                )
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_image":
            native_only[f"{where}.content[{j}].file_id"] = "images by file_id are stored on OpenAI"
        else:
            native_only[f"{where}.content[{j}].type"] = f"content parts of type '{kind}'"
    chat_role = "system" if role == "developer" else role  # most chat servers know only "system"
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": chat_role, "content": parts[0]["text"]}
    return {"role": chat_role, "content": parts}


def _tools(body: dict[str, Any], native_only: dict[str, str]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array", param="tools", code="invalid_type")
    chat_tools = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad_request(f"tools[{i}] must be an object with a 'type'", param=f"tools[{i}]")
        if tool["type"] == FILE_SEARCH_TOOL:
            continue  # run by the gateway (see file_search_tool)
        if tool["type"] != FUNCTION_TOOL:
            native_only[f"tools[{i}].type"] = (
                f"the built-in '{tool['type']}' tool is run by OpenAI's servers; a chat upstream "
                "cannot run it"
            )
            continue
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise bad_request(f"tools[{i}].name must be a non-empty string", param=f"tools[{i}].name")
        function: dict[str, Any] = {"name": tool["name"]}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        chat_tools.append({"type": "function", "function": function})
    return chat_tools


def file_search_tool(body: dict[str, Any]) -> FileSearchTool | None:
    """The call's `file_search` tool, validated: the gateway runs it against the tenant's vector
    stores whatever the upstream, so it is never relayed and never refused as native-only."""
    found = [
        (i, tool)
        for i, tool in enumerate(body.get("tools") or ())
        if isinstance(tool, dict) and tool.get("type") == FILE_SEARCH_TOOL
    ]
    if not found:
        return None
    if len(found) > 1:
        raise bad_request(
            "only one file_search tool may be given; list every vector store in its vector_store_ids",
            param=f"tools[{found[1][0]}]",
        )
    i, tool = found[0]
    where = f"tools[{i}]"
    unknown = sorted(
        tool.keys() - {"type", "vector_store_ids", "max_num_results", "filters", "ranking_options"}
    )
    if unknown:
        raise unsupported(f"{where}.{unknown[0]}", f"'{unknown[0]}' is not a field of the file_search tool")
    ids = tool.get("vector_store_ids")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_FILE_SEARCH_STORES
        or not all(isinstance(x, str) and x for x in ids)
    ):
        raise bad_request(
            f"{where}.vector_store_ids must be a list of 1 to {MAX_FILE_SEARCH_STORES} vector store ids",
            param=f"{where}.vector_store_ids",
        )
    limit = tool.get("max_num_results", DEFAULT_FILE_SEARCH_RESULTS)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 50:
        raise bad_request(
            f"{where}.max_num_results must be an integer from 1 to 50", param=f"{where}.max_num_results"
        )
    condition = tool.get("filters")
    if condition is not None and (problem := filter_problem(condition, f"{where}.filters")):
        raise bad_request(problem, param=f"{where}.filters")
    threshold = score_threshold(tool.get("ranking_options"), f"{where}.ranking_options")
    include = body.get("include") or ()
    return FileSearchTool(
        tuple(dict.fromkeys(ids)), limit, condition, threshold, FILE_SEARCH_RESULTS in include
    )


def _tool_choice(value: Any, native_only: dict[str, str]) -> Any:
    if value is None or value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == FILE_SEARCH_TOOL:
        return None  # the gateway always runs a file_search tool it is given
    if isinstance(value, dict) and value.get("type") == FUNCTION_TOOL and isinstance(value.get("name"), str):
        return {"type": "function", "function": {"name": value["name"]}}
    if isinstance(value, dict):
        native_only["tool_choice"] = f"tool_choice of type '{value.get('type')}'"
        return None
    raise bad_request(
        "'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}",
        param="tool_choice",
        code="invalid_value",
    )


def _response_format(text: Any, native_only: dict[str, str]) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise bad_request("'text' must be an object", param="text", code="invalid_type")
    for key in text.keys() - {"format", "verbosity"}:
        native_only[f"text.{key}"] = "no chat completions equivalent"
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if not isinstance(fmt, dict):
        raise bad_request("'text.format' must be an object", param="text.format", code="invalid_type")
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise bad_request(
                "'text.format' of type json_schema needs a 'name' (string) and a 'schema' (object)",
                param="text.format",
            )
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise bad_request(
        "'text.format.type' must be text, json_object or json_schema",
        param="text.format.type",
        code="invalid_value",
    )


def decode_request(
    body: dict[str, Any], history: list[dict[str, Any]], store: bool, ttl_s: int
) -> GatewayRequest:
    """Validate a Responses call and translate it into the internal (chat-form) request.

    `history`: the items of the stored conversation `previous_response_id` points at."""
    reject_forbidden(body)
    model = require_model(body)
    for name, why in ALWAYS_REFUSED.items():
        if body.get(name) not in (None, False):
            raise unsupported(name, f"'{name}' is not supported: {why}.")
    if "input" not in body:
        raise bad_request(
            "you must provide an input parameter", param="input", code="missing_required_parameter"
        )
    input_items = normalize_input(body["input"])
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request("'instructions' must be a string", param="instructions", code="invalid_type")
    for name, kinds, described in (
        ("stream", (bool,), "a boolean"),
        ("store", (bool,), "a boolean"),
        ("temperature", (int, float), "a number"),
        ("top_p", (int, float), "a number"),
        ("user", (str,), "a string"),
        ("metadata", (dict,), "an object"),
        ("parallel_tool_calls", (bool,), "a boolean"),
        ("previous_response_id", (str,), "a string"),
        ("include", (list,), "an array"),
        ("reasoning", (dict,), "an object"),
    ):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        ):
            raise bad_request(f"'{name}' must be {described}", param=name, code="invalid_type")
    check_bounds(body, "max_output_tokens", 1, 1_048_576)

    native_only: dict[str, str] = {}
    for name in body.keys() - TRANSLATED - ALWAYS_REFUSED.keys():
        native_only[name] = "a Responses API field with no chat completions equivalent"
    messages = items_to_messages(history + input_items, native_only, offset=len(history))
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    if not messages:
        raise bad_request("'input' must contain at least one item", param="input", code="invalid_value")
    chat: dict[str, Any] = {"model": model, "messages": messages}
    tools = _tools(body, native_only)
    if tools:
        chat["tools"] = tools
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    choice = _tool_choice(body.get("tool_choice"), native_only)
    if choice is not None and tools:
        chat["tool_choice"] = choice
    response_format = _response_format(body.get("text"), native_only)
    if response_format is not None:
        chat["response_format"] = response_format
    verbosity = (body.get("text") or {}).get("verbosity")
    if verbosity is not None:
        chat["verbosity"] = verbosity
    for source, target in (
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("user", "user"),
        ("safety_identifier", "safety_identifier"),
        ("prompt_cache_key", "prompt_cache_key"),
        ("stream", "stream"),
    ):
        if body.get(source) is not None:
            chat[target] = body[source]
    reasoning = body.get("reasoning") or {}
    if reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    if reasoning.get("summary") is not None:
        native_only["reasoning.summary"] = "reasoning summaries come only from the Responses API"
    if body.get("truncation") not in (None, "disabled"):
        native_only["truncation"] = "a chat upstream does not truncate a conversation for you"
    if body.get("service_tier") not in (None, "auto", "default"):
        chat["service_tier"] = body["service_tier"]
    for value in body.get("include") or ():
        if value == "message.output_text.logprobs":
            native_only["include"] = "output logprobs are returned by native Responses upstreams only"

    request = GatewayRequest(chat, NAME, native=body)
    request.native_only = native_only
    request.file_search = file_search_tool(body)
    request.origin = ResponsesCall(
        store=store,
        ttl_s=ttl_s,
        previous_response_id=body.get("previous_response_id"),
        input_items=input_items,
        history=history,
        echo={
            "instructions": instructions,
            "tools": body.get("tools") or [],
            "tool_choice": body.get("tool_choice") or "auto",
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") or {},
            "user": body.get("user"),
            "text": body.get("text") or {"format": {"type": "text"}},
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "truncation": body.get("truncation") or "disabled",
            "service_tier": body.get("service_tier") or "default",
        },
    )
    return request


# -- the client's answer -----------------------------------------------------------------------


def usage_object(usage: Usage | None) -> dict[str, Any]:
    usage = usage or Usage(0, 0)
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


_MARKER = re.compile(r"\[(\d{1,3})\]")


def file_id_of(citation: dict[str, Any]) -> str:
    """The file a cited source came from: its own id when it has one, else one derived from it."""
    given = citation.get("file_id")
    if isinstance(given, str) and given:
        return given
    source = str(citation.get("source") or citation.get("title") or citation.get("id"))
    return "file-" + hashlib.sha256(source.encode()).hexdigest()[:24]


def annotations(text: str, citations: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """`file_citation` annotations for the [n] markers the model wrote, at their positions."""
    if not citations or not text:
        return []
    by_number = {c.get("id"): c for c in citations}
    found = []
    for match in _MARKER.finditer(text):
        cited = by_number.get(int(match.group(1)))
        if cited is not None:
            source = str(cited.get("source") or cited.get("title") or "")
            found.append(
                {
                    "type": "file_citation",
                    "file_id": file_id_of(cited),
                    "filename": cited.get("filename") or os.path.basename(source) or source,
                    "index": match.end(),
                }
            )
    return found


def message_item(
    item_id: str, text: str | None, refusal: str | None, notes: list[dict[str, Any]], status: str
) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "output_text", "text": text, "annotations": notes, "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def call_item(item_id: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    }


def search_item(search: FileSearchCall, status: str) -> dict[str, Any]:
    return {
        "id": search.id,
        "type": GATEWAY_SEARCH_ITEM,
        "status": status,
        "queries": search.queries,
        "results": search.results if status == "completed" else None,
    }


def output_items(completion: Completion) -> list[dict[str, Any]]:
    choice = completion.choices[0]
    items = [search_item(search, "completed") for search in completion.searches]
    if choice.text or choice.refusal or not choice.tool_calls:
        notes = annotations(choice.text or "", completion.citations)
        items.append(message_item(new_id("msg"), choice.text or "", choice.refusal, notes, "completed"))
    items.extend(call_item(new_id("fc"), call, "completed") for call in choice.tool_calls)
    return items


def _status(finish: str | None) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(
    call: ResponsesCall,
    *,
    response_id: str,
    model: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    incomplete: dict[str, str] | None = None,
    error: dict[str, str] | None = None,
    citations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        "previous_response_id": call.previous_response_id,
        "store": call.store,
        "usage": usage_object(usage) if usage is not None or status != "in_progress" else None,
        **call.echo,
    }
    # Absent rather than null: the schema types these as present-or-missing.
    for name in ("user", "usage"):
        if body.get(name) is None:
            body.pop(name, None)
    if status == "completed":
        body["completed_at"] = int(time.time())
    if citations is not None:
        body["citations"] = citations  # the sources as chat's `citations` gives them
    return body


def encode_json(completion: Completion, call: ResponsesCall) -> dict[str, Any]:
    status, incomplete = _status(completion.choices[0].finish_reason)
    return response_object(
        call,
        response_id=new_id("resp"),
        model=completion.model,
        created_at=completion.created,
        status=status,
        output=output_items(completion),
        usage=completion.usage,
        incomplete=incomplete,
        citations=completion.citations,
    )


class _StreamWriter:
    """Internal events as the Responses API's typed events, in the order OpenAI's SDK accumulates.

    Items open when their first event arrives and close when the next item starts or the answer
    ends, so `output_item.added` always precedes its content and every item is done before
    `response.completed`."""

    def __init__(self, call: ResponsesCall, model: str) -> None:
        self.call = call
        self.sequence = 0
        self.response_id = new_id("resp")
        self.model = model
        self.created_at = int(time.time())
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being written
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.arguments: list[str] = []
        self.call_of_open: ToolCall | None = None
        self.citations: list[dict[str, Any]] | None = None
        self.usage: Usage | None = None
        self.finish: str | None = None

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return encode_named(kind, data)

    def snapshot(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(
            self.call,
            response_id=self.response_id,
            model=self.model,
            created_at=self.created_at,
            status=status,
            output=list(self.output),
            usage=self.usage if status != "in_progress" else None,
            citations=self.citations if status != "in_progress" else None,
            **extra,
        )

    def start(self) -> list[bytes]:
        return [
            self.event("response.created", response=self.snapshot("in_progress")),
            self.event("response.in_progress", response=self.snapshot("in_progress")),
        ]

    @property
    def index(self) -> int:
        return len(self.output)

    def _open_message(self) -> list[bytes]:
        out = self.close()
        self.open = message_item(new_id("msg"), None, None, [], "in_progress")
        out.append(self.event("response.output_item.added", output_index=self.index, item=self.open))
        return out

    def text_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.open["type"] != "message" or self.refusal:
            out = self._open_message()
        if not self.text:
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(self._part_event("response.content_part.added", 0, part))
        self.text.append(text)
        out.append(
            self.event(
                "response.output_text.delta",
                item_id=self.open["id"],  # type: ignore[index]
                output_index=self.index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def refusal_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.open["type"] != "message":
            out = self._open_message()
        index = 1 if self.text else 0
        if not self.refusal:
            out.append(
                self._part_event("response.content_part.added", index, {"type": "refusal", "refusal": ""})
            )
        self.refusal.append(text)
        out.append(
            self.event(
                "response.refusal.delta",
                item_id=self.open["id"],  # type: ignore[index]
                output_index=self.index,
                content_index=index,
                delta=text,
            )
        )
        return out

    def _part_event(self, kind: str, content_index: int, part: dict[str, Any]) -> bytes:
        assert self.open is not None
        return self.event(
            kind, item_id=self.open["id"], output_index=self.index, content_index=content_index, part=part
        )

    def file_search(self, search: FileSearchCall) -> list[bytes]:
        """A search the gateway already ran: its item's whole life, in the order OpenAI sends it."""
        out = self.close()
        index, ids = self.index, {"item_id": search.id}
        out.append(
            self.event(
                "response.output_item.added", output_index=index, item=search_item(search, "in_progress")
            )
        )
        for stage in ("in_progress", "searching", "completed"):
            out.append(self.event(f"response.file_search_call.{stage}", output_index=index, **ids))
        item = search_item(search, "completed")
        out.append(self.event("response.output_item.done", output_index=index, item=item))
        self.output.append(item)
        return out

    def tool_call(self, call: ToolCall) -> list[bytes]:
        out = self.close()
        self.call_of_open = call
        self.open = call_item(new_id("fc"), call, "in_progress")
        out.append(self.event("response.output_item.added", output_index=self.index, item=self.open))
        return out

    def arguments_delta(self, text: str) -> list[bytes]:
        if self.open is None or self.open["type"] != "function_call":
            return []  # arguments without a call: nothing a client could attach them to
        self.arguments.append(text)
        return [
            self.event(
                "response.function_call_arguments.delta",
                item_id=self.open["id"],
                output_index=self.index,
                delta=text,
            )
        ]

    def close(self) -> list[bytes]:
        """Finish the open item: its done events, then it joins `output`."""
        item = self.open
        if item is None:
            return []
        out: list[bytes] = []
        if item["type"] == "message":
            text = "".join(self.text)
            notes = annotations(text, self.citations)
            content = []
            if self.text:
                for note_index, note in enumerate(notes):
                    out.append(
                        self.event(
                            "response.output_text.annotation.added",
                            item_id=item["id"],
                            output_index=self.index,
                            content_index=0,
                            annotation_index=note_index,
                            annotation=note,
                        )
                    )
                out.append(
                    self.event(
                        "response.output_text.done",
                        item_id=item["id"],
                        output_index=self.index,
                        content_index=0,
                        text=text,
                        logprobs=[],
                    )
                )
                part = {"type": "output_text", "text": text, "annotations": notes, "logprobs": []}
                out.append(self._part_event("response.content_part.done", 0, part))
                content.append(part)
            if self.refusal:
                refusal = "".join(self.refusal)
                index = len(content)
                out.append(
                    self.event(
                        "response.refusal.done",
                        item_id=item["id"],
                        output_index=self.index,
                        content_index=index,
                        refusal=refusal,
                    )
                )
                part = {"type": "refusal", "refusal": refusal}
                out.append(self._part_event("response.content_part.done", index, part))
                content.append(part)
            item = {**item, "status": "completed", "content": content}
        else:
            arguments = "".join(self.arguments)
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=self.index,
                    name=item["name"],
                    arguments=arguments,
                )
            )
            item = {**item, "status": "completed", "arguments": arguments}
        out.append(self.event("response.output_item.done", output_index=self.index, item=item))
        self.output.append(item)
        self.open = None
        self.text, self.refusal, self.arguments = [], [], []
        return out

    def finish_events(self) -> tuple[list[bytes], dict[str, Any]]:
        if self.open is None and all(item["type"] == GATEWAY_SEARCH_ITEM for item in self.output):
            # An empty answer is still a message, as OpenAI returns one.
            self.open = message_item(new_id("msg"), None, None, [], "in_progress")
            out = [self.event("response.output_item.added", output_index=self.index, item=self.open)]
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(self._part_event("response.content_part.added", 0, part))
            self.text = [""]
        else:
            out = []
        out += self.close()
        status, incomplete = _status(self.finish)
        final = self.snapshot(status, incomplete=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self.event(kind, response=final))
        return out, final

    def failure_events(self, error: GatewayError) -> list[bytes]:
        out = self.close()
        detail = {"code": _error_code(error), "message": error.message}
        out.append(self.event("response.failed", response=self.snapshot("failed", error=detail)))
        # The SDK raises on an event whose data carries an "error" object; OpenAI's own `error`
        # event fields (code, message, param) are there too.
        out.append(
            self.event(
                "error",
                code=error.code,
                message=error.message,
                param=error.param,
                error={
                    "type": error.type,
                    "code": error.code,
                    "message": error.message,
                    "param": error.param,
                },
            )
        )
        return out


def _error_code(error: GatewayError) -> str:
    # response.error.code is an enum in OpenAI's schema: server_error covers what a gateway sees.
    return "rate_limit_exceeded" if error.status == 429 else "server_error"


# -- stored responses ------------------------------------------------------------------------------


class ResponseStore:
    """Stored responses of each tenant, in the state layer (shared by replicas on Redis)."""

    def __init__(self, state: Callable[[], StateBackend]) -> None:
        self._state = state

    @staticmethod
    def _key(tenant: str, response_id: str) -> str:
        return f"resp:{{{tenant}}}:{response_id}"

    async def save(self, tenant: str, call: ResponsesCall, response: dict[str, Any]) -> None:
        output = [_stored_item(item) for item in response.get("output") or () if isinstance(item, dict)]
        record = {
            "response": response,
            "input": call.input_items,
            "conversation": call.history + call.input_items + output,
        }
        await self._state().put_record(
            self._key(tenant, str(response["id"])), orjson.dumps(record), call.ttl_s
        )

    async def load(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        raw = await self._state().get_record(self._key(tenant, response_id))
        return orjson.loads(raw) if raw else None

    async def delete(self, tenant: str, response_id: str) -> bool:
        return await self._state().delete_record(self._key(tenant, response_id))


def _stored_item(item: dict[str, Any]) -> dict[str, Any]:
    """An output item as the next turn's input needs it (no statuses of a finished stream)."""
    return {k: v for k, v in item.items() if k != "status"}


def not_found(response_id: str) -> GatewayError:
    return GatewayError(
        404,
        f"No response with id '{response_id}' is stored for this tenant (it may have expired, been "
        "deleted, or been created with store: false).",
        code="response_not_found",
        param="response_id",
    )


class ResponsesClient(OpenAIErrors):
    name = NAME
    model_kind: ModelKind = "chat"

    def __init__(self, state: Callable[[], StateBackend]) -> None:
        self.store = ResponseStore(state)

    async def decode(self, body: dict[str, Any], headers: dict[str, str], policy: Policy) -> GatewayRequest:
        store_flag = body.get("store")
        store = policy.responses.store_by_default if store_flag is None else store_flag is True
        history: list[dict[str, Any]] = []
        previous = body.get("previous_response_id")
        if isinstance(previous, str):
            record = await self.store.load(policy.tenant, previous)
            if record is None:
                raise GatewayError(
                    400,
                    f"Previous response with id '{previous}' not found for this tenant (responses "
                    "are kept for the policy's responses.store_ttl_s, and only with store: true).",
                    code="previous_response_not_found",
                    param="previous_response_id",
                )
            history = record["conversation"]
        return decode_request(body, history, store, policy.responses.store_ttl_s)

    async def encode_json(self, completion: Completion, ctx: RequestContext) -> bytes:
        call: ResponsesCall = ctx.request.origin
        response = encode_json(completion, call)
        if call.store:
            await self.store.save(ctx.tenant, call, response)
        return orjson.dumps(response)

    async def encode_stream(
        self, events: Events, ctx: RequestContext, report: ErrorReport
    ) -> AsyncIterator[bytes]:
        call: ResponsesCall = ctx.request.origin
        writer = _StreamWriter(call, ctx.model)
        started = False
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    chunks = writer.text_delta(event.text) if event.choice == 0 else []
                elif isinstance(event, Start):
                    writer.model = event.model or ctx.model
                    writer.created_at = event.created
                    started = True
                    chunks = writer.start()
                elif isinstance(event, ToolArgumentsDelta):
                    chunks = writer.arguments_delta(event.arguments) if event.choice == 0 else []
                elif isinstance(event, ToolCallStart):
                    chunks = writer.tool_call(ToolCall(event.id, event.name, "")) if event.choice == 0 else []
                elif isinstance(event, RefusalDelta):
                    chunks = writer.refusal_delta(event.text) if event.choice == 0 else []
                elif isinstance(event, ChoiceEnd):
                    if event.choice == 0:
                        writer.finish = event.reason
                    chunks = []
                elif isinstance(event, UsageReport):
                    writer.usage = event.usage
                    chunks = []
                elif isinstance(event, Citations):
                    writer.citations = event.citations
                    chunks = []
                elif isinstance(event, FileSearchCall):
                    chunks = writer.file_search(event)
                else:
                    chunks = []
                for chunk in chunks:
                    yield chunk
        except GatewayError as error:
            report(error)
            if not started:
                for chunk in writer.start():
                    yield chunk
            for chunk in writer.failure_events(error):
                yield chunk
            return
        chunks, final = writer.finish_events()
        for chunk in chunks:
            yield chunk
        if call.store:
            await self.store.save(ctx.tenant, call, final)

    async def relay_json(self, raw: bytes, ctx: RequestContext) -> bytes:
        call: ResponsesCall = ctx.request.origin
        if call.store:
            response = orjson.loads(raw)
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                response["store"] = True
                await self.store.save(ctx.tenant, call, response)
        return raw

    async def relay_stream(self, chunks: AsyncIterator[bytes], ctx: RequestContext) -> AsyncIterator[bytes]:
        call: ResponsesCall = ctx.request.origin
        if not call.store:
            async for chunk in chunks:
                yield chunk
            return
        async for event in iter_events(chunks):
            yield event
            if event_name(event) in ("response.completed", "response.incomplete"):
                payload = event_data(event)
                data = orjson.loads(payload) if payload else None
                response = data.get("response") if isinstance(data, dict) else None
                if isinstance(response, dict) and isinstance(response.get("id"), str):
                    await self.store.save(ctx.tenant, call, {**response, "store": True})


# -- the upstream's request ----------------------------------------------------------------------


def upstream_body(request: GatewayRequest, upstream_model: str) -> dict[str, Any]:
    """The body for a native Responses endpoint."""
    if request.protocol == NAME and request.native is not None:
        return _native_body(request, upstream_model)
    return _from_chat(request, upstream_model)


def _native_body(request: GatewayRequest, upstream_model: str) -> dict[str, Any]:
    call: ResponsesCall = request.origin
    body = dict(request.native)  # type: ignore[arg-type]
    body["model"] = upstream_model
    # The gateway keeps the conversation: the upstream gets all of it and stores nothing.
    body["store"] = False
    body.pop("previous_response_id", None)
    items = [_without_id(item) for item in call.history] + [
        _rewritten_item(request, i) for i in call.input_items
    ]
    body["input"] = [item for item in items if item.get("type") != GATEWAY_SEARCH_ITEM]
    if request.file_search is not None:
        _without_file_search(body)
    instructions = body.get("instructions")
    added = "\n\n".join(request.system_added)
    if added:
        body["instructions"] = f"{request.rewritten(instructions)}\n\n{added}" if instructions else added
    elif instructions:
        body["instructions"] = request.rewritten(instructions)
    if request.model != (request.native or {}).get("model"):
        pass  # a budget downgrade changed the public model; the deployment's own name is above
    return body


def _without_file_search(body: dict[str, Any]) -> None:
    """The gateway ran the file_search tool; the upstream gets its sources in the instructions and
    must not try to run it against stores it does not have."""
    tools = [
        t for t in body.get("tools") or () if not (isinstance(t, dict) and t.get("type") == FILE_SEARCH_TOOL)
    ]
    if tools:
        body["tools"] = tools
    else:
        body.pop("tools", None)
        body.pop("tool_choice", None)
        body.pop("parallel_tool_calls", None)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == FILE_SEARCH_TOOL:
        body.pop("tool_choice")
    include = [value for value in body.get("include") or () if value != FILE_SEARCH_RESULTS]
    if include:
        body["include"] = include
    else:
        body.pop("include", None)


def _without_id(item: dict[str, Any]) -> dict[str, Any]:
    # Ids of items the upstream never stored would be looked up and rejected.
    return {k: v for k, v in item.items() if k != "id"}


def _rewritten_item(request: GatewayRequest, item: dict[str, Any]) -> dict[str, Any]:
    item = _without_id(item)
    if not request.text_rewrites or item.get("type") != "message":
        return item
    content = [
        {**part, "text": request.rewritten(part["text"])}
        if isinstance(part, dict) and isinstance(part.get("text"), str)
        else part
        for part in item["content"]
    ]
    return {**item, "content": content}


def _from_chat(request: GatewayRequest, upstream_model: str) -> dict[str, Any]:
    """A chat-form request for a deployment that speaks only the Responses API."""
    body = request.body
    instructions = []
    items: list[dict[str, Any]] = []
    for message in request.messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            instructions.append(content if isinstance(content, str) else _parts_text(content))
        elif role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id"),
                    "output": _parts_text(content) if not isinstance(content, str) else content,
                }
            )
        else:
            if content:
                items.append(_chat_content_item(str(role), content))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.get("id"),
                        "name": function.get("name"),
                        "arguments": function.get("arguments") or "",
                    }
                )
    out: dict[str, Any] = {"model": upstream_model, "input": items, "store": False}
    if instructions:
        out["instructions"] = "\n\n".join(instructions)
    if body.get("tools"):
        out["tools"] = [
            {"type": "function", **(tool.get("function") or {})}
            for tool in body["tools"]
            if tool.get("type") == "function"
        ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        out["tool_choice"] = {"type": "function", "name": (choice.get("function") or {}).get("name")}
    elif choice is not None:
        out["tool_choice"] = choice
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        out["text"] = {"format": {"type": "json_schema", **(response_format.get("json_schema") or {})}}
    elif isinstance(response_format, dict) and response_format.get("type") == "json_object":
        out["text"] = {"format": {"type": "json_object"}}
    cap = request.max_output_tokens()
    if cap is not None:
        out["max_output_tokens"] = cap
    for name in ("temperature", "top_p", "user", "stream", "parallel_tool_calls"):
        if body.get(name) is not None:
            out[name] = body[name]
    return out


def _chat_content_item(role: str, content: Any) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        return {"type": "message", "role": role, "content": [{"type": kind, "text": content}]}
    parts = []
    for part in content:
        if part.get("type") == "text":
            parts.append({"type": kind, "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            parts.append({"type": "input_image", "image_url": (part.get("image_url") or {}).get("url")})
    return {"type": "message", "role": role, "content": parts}


# -- the upstream's answer -----------------------------------------------------------------------


def usage_of(data: Any) -> Usage | None:
    if not isinstance(data, dict) or not isinstance(data.get("input_tokens"), int):
        return None
    cached = (data.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (data.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    output = data.get("output_tokens")
    return Usage(data["input_tokens"], output if isinstance(output, int) else 0, cached, reasoning)


def usage_of_body(data: dict[str, Any]) -> Usage | None:
    return usage_of(data.get("usage"))


def _finish(data: dict[str, Any], has_calls: bool) -> str:
    if data.get("status") == "incomplete":
        reason = (data.get("incomplete_details") or {}).get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if has_calls else "stop"


def decode_json(data: dict[str, Any]) -> Completion:
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[ToolCall] = []
    for item in data.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text") or ""))
                elif isinstance(part, dict) and part.get("type") == "refusal":
                    refusals.append(str(part.get("refusal") or ""))
        elif item.get("type") == "function_call":
            calls.append(
                ToolCall(
                    str(item.get("call_id") or ""),
                    str(item.get("name") or ""),
                    str(item.get("arguments") or ""),
                )
            )
    choice = Choice(
        0,
        text="".join(texts) if texts or not calls else None,
        refusal="".join(refusals) or None,
        tool_calls=calls,
        finish_reason=_finish(data, bool(calls)),
    )
    created = data.get("created_at")
    return Completion(
        id=str(data.get("id") or new_id("resp")),
        model=str(data.get("model") or ""),
        created=created if isinstance(created, int) else int(time.time()),
        choices=[choice],
        usage=usage_of(data.get("usage")),
    )


async def decode_stream(chunks: AsyncIterator[bytes]) -> Events:
    calls = 0
    has_calls = False
    async for data in iter_json(chunks):
        kind = data.get("type")
        if kind == "response.output_text.delta":
            yield TextDelta(str(data.get("delta") or ""))
        elif kind == "response.function_call_arguments.delta":
            yield ToolArgumentsDelta(calls - 1, str(data.get("delta") or ""))
        elif kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") == "function_call":
                has_calls = True
                yield ToolCallStart(calls, str(item.get("call_id") or ""), str(item.get("name") or ""))
                calls += 1
        elif kind == "response.refusal.delta":
            yield RefusalDelta(str(data.get("delta") or ""))
        elif kind == "response.created":
            response = data.get("response") or {}
            created = response.get("created_at")
            yield Start(
                str(response.get("id") or new_id("resp")),
                str(response.get("model") or ""),
                created if isinstance(created, int) else int(time.time()),
            )
        elif kind in ("response.completed", "response.incomplete"):
            response = data.get("response") or {}
            yield ChoiceEnd(_finish(response, has_calls))
            usage = usage_of(response.get("usage"))
            if usage is not None:
                yield UsageReport(usage)
            return
        elif kind in ("response.failed", "error"):
            error = (data.get("response") or {}).get("error") or data
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise StreamInterrupted(f"the upstream reported an error mid-stream: {message}")


class StreamTap:
    """What accounting needs from a Responses stream relayed untouched: the id and model of
    `response.created`, the first generated text, and the usage of the final event."""

    def __init__(self, strip: bool) -> None:
        self.facts = AnswerFacts()
        self._kept: list[bytes] = []

    def feed(self, event: bytes) -> bytes | None:
        facts = self.facts
        name = event_name(event) or ""
        if name.endswith(".delta"):
            if facts.first_output is None:
                facts.mark_output()
            else:
                facts.output_events += 1
        elif name in ("response.created", "response.completed", "response.incomplete"):
            payload = event_data(event)
            data = orjson.loads(payload) if payload else {}
            response = data.get("response") if isinstance(data, dict) else None
            if isinstance(response, dict):
                facts.id = str(response.get("id") or "")
                facts.model = str(response.get("model") or "")
                if name != "response.created":
                    facts.usage = usage_of(response.get("usage"))
                    facts.finish_reasons.append(_finish(response, False))
        if facts.usage is None:
            self._kept.append(event)
        return event

    async def generated_text(self) -> str:
        return await text_of_events(decode_stream(replay(self._kept)))
