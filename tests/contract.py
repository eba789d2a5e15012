"""Validate the gateway's answers against OpenAI's own OpenAPI description (../shared/contracts).

`check(body, "Response")` validates a body against a component schema; `check_path(...)` finds
the schema of a path's 200 answer. Tests that use it skip, with the reason, when the shared
material is not beside the project.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "contracts" / "openai-api-subset.json"
BASE_URI = "urn:openai-api-subset"


@functools.cache
def _spec() -> tuple[dict[str, Any], Registry]:
    if not CONTRACT.is_file():
        pytest.skip(f"OpenAI's OpenAPI description is not at {CONTRACT} (../shared is absent)")
    spec = _nullable(orjson.loads(CONTRACT.read_bytes()))
    registry = Registry().with_resource(BASE_URI, Resource(contents=spec, specification=DRAFT202012))
    return spec, registry


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` (still used in places) as JSON Schema's null type."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        kind = node.get("type")
        if isinstance(kind, str):
            node["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            node["type"] = [*kind, "null"]
        elif "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        elif kind is None:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


def schema_errors(body: Any, component: str) -> list[str]:
    """Every way `body` breaks the named component schema (empty when it conforms)."""
    _, registry = _spec()
    validator = Draft202012Validator(
        {"$ref": f"{BASE_URI}#/components/schemas/{component}"}, registry=registry
    )
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message[:300]}"
        for error in validator.iter_errors(body)
    ]


def check(body: Any, component: str) -> None:
    errors = schema_errors(body, component)
    assert not errors, f"not a valid {component}:\n" + "\n".join(errors[:10])


def response_component(path: str, method: str = "post") -> str:
    """The component a path's 200 JSON answer is described by (e.g. '/responses' -> 'Response')."""
    spec, _ = _spec()
    answer = spec["paths"][path][method]["responses"]["200"]["content"]
    ref = answer.get("application/json", next(iter(answer.values())))["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]


@functools.cache
def stream_event_components() -> dict[str, str]:
    """Responses stream event type ('response.created', ...) -> the component describing it."""
    spec, _ = _spec()
    schemas = spec["components"]["schemas"]
    union = schemas["ResponseStreamEvent"]
    found = {}
    for option in union.get("anyOf") or union.get("oneOf") or ():
        name = option["$ref"].rsplit("/", 1)[-1]
        kinds = schemas[name].get("properties", {}).get("type", {}).get("enum") or ()
        for kind in kinds:
            found[kind] = name
    return found


def check_stream_event(event: dict[str, Any]) -> None:
    component = stream_event_components().get(event.get("type", ""))
    assert component is not None, f"{event.get('type')!r} is not a Responses stream event OpenAI defines"
    check(event, component)
