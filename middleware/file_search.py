"""file_search: run the Responses API's `file_search` tool against the tenant's own vector stores.

OpenAI runs this tool on its servers against stores it hosts; here the gateway runs it, whatever
the upstream, before the upstream call: the last user turn (expanded when it reads as a
follow-up) is searched in the tool's `vector_store_ids` with its `max_num_results`, `filters` and
`ranking_options`, the results that fit the policy's token budget go in as numbered sources (the
same template, conflict notes and injection screening as the policy's retrieval), and the
upstream never sees the tool. The answer gets the search as a `file_search_call` output item and
`file_citation` annotations naming each cited file. The retrieval outcome is recorded on the
context, so the refusal stage applies the tenant's confidence bar as it does on chat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from gateway.chain import Handler
from gateway.context import RequestContext
from gateway.errors import EmbeddingUnavailable, VectorStoreUnavailable
from gateway.policy import Policy, RetrievalPolicy
from gateway.protocols.model import Events, FileSearchCall
from gateway.protocols.request import FileSearchTool
from gateway.protocols.responses import new_id
from gateway.response import GatewayResponse
from gateway.retrieval.index import RetrievalResult
from gateway.retrieval.tokens import TokenCounter, default_counter
from gateway.services import Services, provider_embedding_model
from gateway.store_search import StoreResults, StoreSearch
from middleware.input_guardrails import ChunkScreen, chunk_screen
from middleware.refusal import RefusalStage
from middleware.retrieval import (
    QueryCost,
    RetrievalOutcome,
    attach_citations,
    inject_sources,
    retrieval_failure,
    screen_for_injection,
    search_query,
    select_within_budget,
)

NAME = "file_search"


async def after_start(events: Events, search: FileSearchCall) -> Events:
    """The search goes first in the answer, right after the stream's Start."""
    started = False
    async for event in events:
        yield event
        if not started:
            started = True
            yield search


class FileSearchStage:
    name = NAME

    def __init__(
        self,
        settings: RetrievalPolicy,
        stores: StoreSearch,
        counter: Callable[[], TokenCounter],
        screen: ChunkScreen | None = None,
        query_cost: QueryCost | None = None,
        refusal: RefusalStage | None = None,
    ) -> None:
        self.settings = settings  # the tenant's retrieval settings: template, token budget, follow-ups
        self.stores = stores
        self.counter = counter  # loaded with the retrieval service the search opens
        self.screen = screen
        self.query_cost = query_cost
        # The tenant's confidence bar, when its policy has no retrieval (and so no refusal stage
        # in the chain, which otherwise applies it to this stage's outcome as to retrieval's).
        self.refusal = refusal

    async def _search(self, ctx: RequestContext, tool: FileSearchTool, query: str) -> StoreResults:
        stores = [(sid, await self.stores.searchable(ctx.policy, sid)) for sid in tool.vector_store_ids]
        try:
            return await self.stores.search(
                ctx.policy, stores, [query], tool.max_num_results, tool.filters, tool.score_threshold
            )
        except (VectorStoreUnavailable, EmbeddingUnavailable) as exc:
            raise retrieval_failure(ctx, exc) from exc

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        tool = ctx.request.file_search
        if tool is None:
            return await call_next(ctx)
        settings = self.settings
        query = search_query(ctx.request.messages, settings.rewrite_follow_ups)
        if not query:
            ctx.decide(NAME, "skipped", reason="no user text to search for")
            return await call_next(ctx)
        found = await self._search(ctx, tool, query)
        if self.query_cost is not None:
            ctx.side_calls.append(self.query_cost.of(query))
        hits = [result.hit for result in found.results]
        result = RetrievalResult(hits, found.confidence, found.best.corpus_version)
        outcome = RetrievalOutcome(
            query,
            result,
            select_within_budget(hits, settings.max_context_tokens, self.counter()),
            cite_files=True,
        )
        ctx.retrieval = outcome
        ctx.response_headers["x-gateway-confidence"] = f"{found.confidence:.3f}"
        ctx.decide(
            NAME,
            "searched",
            query=query if ctx.policy.log_content else None,
            query_sha256=hashlib.sha256(query.encode()).hexdigest()[:16],
            vector_store_ids=list(tool.vector_store_ids),
            max_num_results=tool.max_num_results,
            confidence=round(found.confidence, 4),
            results=[
                {"file_id": r.file_id, "chunk_id": r.hit.chunk.id, "score": round(r.score, 6)}
                for r in found.results
            ],
            injected=[h.chunk.id for h in outcome.injected],
        )
        outcome.injected = screen_for_injection(self.screen, ctx, outcome.injected)
        inject_sources(ctx, outcome, settings, NAME)
        search = FileSearchCall(
            new_id("fs"),
            [query],
            [r.as_openai(text_key="text") for r in found.results] if tool.include_results else None,
        )
        if self.refusal is not None:
            response = await self.refusal.handle(ctx, call_next)
        else:
            response = await call_next(ctx)
        attach_citations(response, outcome)
        if response.status == 200:
            if response.is_stream:
                response.map_events(lambda events: after_start(events, search))
            else:
                completion = response.completion()
                completion.searches = [search, *completion.searches]
                response.set_completion(completion)
        return response


def build(policy: Policy, services: Services) -> FileSearchStage | None:
    if services.vector_stores is None:
        return None  # an embedded use of the chain without the vector stores API
    embedding_model = provider_embedding_model(services.config)
    query_cost = QueryCost(embedding_model, services.pricing) if embedding_model is not None else None
    refusal = None if policy.retrieval.enabled else RefusalStage(policy.retrieval)
    return FileSearchStage(
        policy.retrieval, services.vector_stores, default_counter, chunk_screen(policy), query_cost, refusal
    )
