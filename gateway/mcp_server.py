"""The MCP server's tools, `search` and `fetch`, over the tenant's corpus (imported by
gateway.mcp_api on the first /mcp request: the `mcp` package costs ~30 MB and 0.4 s to import)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError  # its message reaches the agent as the error
from starlette.types import ASGIApp

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.policy import Policy
    from gateway.retrieval.service import RetrievalService

MAX_RESULTS = 20
SNIPPET_CHARS = 400
INSTRUCTIONS = (
    "Search this organisation's own documents. `search` returns ranked passages with their source "
    "and a retrieval confidence in [0, 1]; when `refuse` is true the documents most likely do not "
    "answer the question, so say you do not know rather than guess. `fetch` returns a passage or a "
    "whole document by the id `search` gave."
)


def build_server(
    policy_of: Callable[[dict[str, str]], Policy],
    retrieval: Callable[[], Awaitable[RetrievalService]],
) -> tuple[MCPServer, ASGIApp]:
    """The server (stateless, JSON answers: any replica answers any call) and its ASGI app."""
    server = MCPServer("rag-gateway", instructions=INSTRUCTIONS)

    async def corpus(ctx: Context) -> tuple[Policy, RetrievalService]:
        headers = {k.lower(): v for k, v in (ctx.headers or {}).items()}
        try:
            policy = policy_of(headers)
        except GatewayError as error:
            raise ToolError(error.message) from error
        if not policy.retrieval.enabled:
            raise ToolError(f"tenant {policy.tenant!r} has no corpus (retrieval is off in its policy)")
        return policy, await retrieval()

    @server.tool(
        description="Search the organisation's documents. Returns ranked passages (id, title, "
        "source, snippet, score), the retrieval confidence, and `refuse`: true when the tenant's "
        "policy would refuse to answer from these results."
    )
    async def search(query: str, ctx: Context, max_results: int = 5) -> dict[str, Any]:
        policy, service = await corpus(ctx)
        if not query.strip():
            raise ToolError("query is empty: pass the question or keywords to search for")
        if not 1 <= max_results <= MAX_RESULTS:
            raise ToolError(f"max_results must be from 1 to {MAX_RESULTS}")
        settings = policy.retrieval
        result = await service.search(
            policy.tenant, query, max_results, settings.candidates, settings.filters or None
        )
        return {
            "results": [
                {
                    "id": hit.chunk.id,
                    "title": hit.chunk.title,
                    "source": hit.chunk.source,
                    "section": hit.chunk.section,
                    "page": hit.chunk.page,
                    "snippet": hit.chunk.text[:SNIPPET_CHARS],
                    "score": round(max(0.0, min(1.0, hit.dense_score or 0.0)), 4),
                }
                for hit in result.hits
            ],
            "confidence": round(result.confidence, 4),
            "refuse": result.confidence < settings.min_confidence,
        }

    @server.tool(
        description='Fetch a passage by the id `search` returned ("doc#3"), or a whole document by '
        "its document id, with its source for citation."
    )
    async def fetch(id: str, ctx: Context) -> dict[str, Any]:
        policy, service = await corpus(ctx)
        index = await asyncio.to_thread(service.store.tenant, policy.tenant)
        documents = await asyncio.to_thread(index.documents)
        doc_id, _, ordinal = id.rpartition("#")
        if doc_id and ordinal.isdigit():
            for chunk in documents.get(doc_id, []):
                if chunk.id == id:
                    return {"id": id, "source": chunk.source, "title": chunk.title, "text": chunk.text}
        chunks = documents.get(id)
        if chunks:
            text = "\n\n".join(c.text for c in chunks)
            return {"id": id, "source": chunks[0].source, "title": chunks[0].title, "text": text}
        raise ToolError(f"nothing with id {id!r} in this corpus: pass an id that search returned")

    app = server.streamable_http_app(streamable_http_path="/", stateless_http=True, json_response=True)
    return server, app
