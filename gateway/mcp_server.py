"""The MCP server's tools, `search` and `fetch`, over the tenant's vector stores (imported by
gateway.mcp_api on the first /mcp request: the `mcp` package costs ~30 MB and 0.4 s to import).

`search` runs the same store search as `POST /v1/vector_stores/{id}/search` and the file_search
tool (gateway.store_search), over every store of the tenant (its retrieval corpus included) or
the ones the agent names. A result's id is `<store id>/<chunk id>`; `fetch` takes it, or
`<store id>/<document or file id>` for the whole document.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError  # its message reaches the agent as the error
from starlette.types import ASGIApp

from gateway.errors import GatewayError
from gateway.vector_stores import index_key

if TYPE_CHECKING:
    from gateway.policy import Policy
    from gateway.store_search import StoreSearch

MAX_RESULTS = 20
SNIPPET_CHARS = 400
INSTRUCTIONS = (
    "Search this organisation's own documents. `search` returns ranked passages with their source "
    "and a retrieval confidence in [0, 1]; when `refuse` is true the documents most likely do not "
    "answer the question, so say you do not know rather than guess. `fetch` returns a passage or a "
    "whole document by the id `search` gave."
)


def build_server(
    admitted: Callable[[dict[str, str], str | None], Awaitable[Policy]], stores: StoreSearch
) -> tuple[MCPServer, ASGIApp]:
    """The server (stateless, JSON answers: any replica answers any call) and its ASGI app.
    `admitted`: the caller's policy, its tool call counted against the tenant's rate limits."""
    server = MCPServer("rag-gateway", instructions=INSTRUCTIONS)

    async def tenant_of(ctx: Context, tool: str) -> Policy:
        headers = {k.lower(): v for k, v in (ctx.headers or {}).items()}
        try:
            return await admitted(headers, f"the MCP tool {tool!r}")
        except GatewayError as error:
            raise ToolError(error.message) from error

    async def chosen(policy: Policy, vector_store_ids: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
        if vector_store_ids:
            return [(sid, await stores.searchable(policy, sid)) for sid in dict.fromkeys(vector_store_ids)]
        every = await stores.every_store(policy)
        if not every:
            raise ToolError(
                f"tenant {policy.tenant!r} has no documents to search: it has no vector stores and "
                "retrieval is off in its policy"
            )
        return every

    @server.tool(
        description="Search the organisation's documents (every vector store, or those named). "
        "Returns ranked passages (id, title, source, snippet, score, file_id, vector_store_id), the "
        "retrieval confidence, and `refuse`: true when the tenant's policy would refuse to answer "
        "from these results."
    )
    async def search(
        query: str, ctx: Context, max_results: int = 5, vector_store_ids: list[str] | None = None
    ) -> dict[str, Any]:
        policy = await tenant_of(ctx, "search")
        if not query.strip():
            raise ToolError("query is empty: pass the question or keywords to search for")
        if not 1 <= max_results <= MAX_RESULTS:
            raise ToolError(f"max_results must be from 1 to {MAX_RESULTS}")
        try:
            found = await stores.search(
                policy, await chosen(policy, vector_store_ids), [query], max_results, None, 0.0
            )
        except GatewayError as error:
            raise ToolError(error.message) from error
        return {
            "results": [
                {
                    "id": f"{r.store_id}/{r.hit.chunk.id}",
                    "title": r.hit.chunk.title,
                    "source": r.filename,
                    "section": r.hit.chunk.section,
                    "page": r.hit.chunk.page,
                    "snippet": r.hit.chunk.text[:SNIPPET_CHARS],
                    "score": round(r.score, 4),
                    "file_id": r.file_id,
                    "vector_store_id": r.store_id,
                }
                for r in found.results
            ],
            "confidence": round(found.confidence, 4),
            "refuse": found.confidence < policy.retrieval.min_confidence,
        }

    @server.tool(
        description='Fetch a passage by the id `search` returned ("vs_.../doc#3"), or a whole '
        "document as `<vector store id>/<document id>`, with its source for citation."
    )
    async def fetch(id: str, ctx: Context) -> dict[str, Any]:
        policy = await tenant_of(ctx, "fetch")
        store_id, _, wanted = id.partition("/")
        if not wanted:
            raise ToolError(f"{id!r} is not an id search returned: they read '<vector store id>/<id>'")
        try:
            await stores.searchable(policy, store_id)
            retrieval = await stores.retrieval()
        except GatewayError as error:
            raise ToolError(error.message) from error
        index = await asyncio.to_thread(retrieval.store.tenant, index_key(policy.tenant, store_id))
        documents = await asyncio.to_thread(index.documents)
        doc_id, _, ordinal = wanted.rpartition("#")
        if doc_id and ordinal.isdigit():
            for chunk in documents.get(doc_id, []):
                if chunk.id == wanted:
                    return {"id": id, "source": chunk.source, "title": chunk.title, "text": chunk.text}
        chunks = documents.get(wanted)
        if chunks:
            text = "\n\n".join(c.text for c in chunks)
            return {"id": id, "source": chunks[0].source, "title": chunks[0].title, "text": text}
        raise ToolError(f"nothing with id {id!r} in this store: pass an id that search returned")

    app = server.streamable_http_app(streamable_http_path="/", stateless_http=True, json_response=True)
    return server, app
