"""What the resource routes of /v1 (files, vector stores) share: running a handler for the caller's
tenant with every GatewayError answered in OpenAI's envelope, and OpenAI's cursor-paged lists."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import GatewayError, bad_request, error_response

if TYPE_CHECKING:
    from gateway.policy import Policy


# The caller's policy (a 401 GatewayError without a valid key); with `counted`, the call also takes
# one request from the tenant's and the key's rate limits (a 429 when they are spent).
PolicyOf = Callable[[Request, bool], Awaitable["Policy"]]


async def answer(
    request: Request,
    policy_of: PolicyOf,
    handle: Callable[[Policy], Awaitable[Any]],
    *,
    counted: bool = False,
) -> Response:
    """`handle` for the tenant whose key the request carries; a dict it returns is sent as JSON.
    `counted`: a call that does work (an upload, an attach, a search) counts against rate limits."""
    try:
        result = await handle(await policy_of(request, counted))
    except GatewayError as error:
        return error_response(error)
    return result if isinstance(result, Response) else JSONResponse(result)


def page_query(query: Mapping[str, str], default_limit: int, max_limit: int) -> tuple[str, int]:
    """A list's `order` (asc or desc, desc by default) and `limit` (1 to max_limit)."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request(f"order must be 'asc' or 'desc', not {order!r}", param="order")
    raw = query.get("limit", str(default_limit))
    if not raw.isdigit() or not 1 <= int(raw) <= max_limit:
        raise bad_request(f"limit must be an integer from 1 to {max_limit}", param="limit")
    return order, int(raw)


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list object."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": has_more,
    }
