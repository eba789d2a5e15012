"""retrieval: search the tenant's corpus, inject numbered sources, attach citations to the answer.

The query is the last user turn; a short follow-up ("and for Zone B?") is expanded with the
previous user turn so it is searched in context. The top hits that fit the policy's token budget
go into one system message built from the tenant's template, and the model is told to cite them as
[n]. The answer gets a top-level `citations` array (a stream gets it in a final chunk before
[DONE]). The confidence is sent as `x-gateway-confidence`; the refusal stage acts on it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry.trace import Tracer

from gateway.chain import Handler
from gateway.context import RequestContext, SideCall
from gateway.errors import EmbeddingUnavailable, GatewayError, PoliciesNotApplicable, VectorStoreUnavailable
from gateway.policy import Policy, RetrievalPolicy
from gateway.pricing import Pricing
from gateway.protocols.model import Citations, Events, Usage
from gateway.protocols.request import text_of
from gateway.response import GatewayResponse
from gateway.retrieval.conflicts import ConflictGroup, find_conflicts, newest
from gateway.retrieval.index import Hit, RetrievalResult
from gateway.retrieval.rerank import llm_rerank
from gateway.retrieval.service import RetrievalService
from gateway.retrieval.tokens import TokenCounter
from gateway.retrieval.warmup import CorpusWarmup
from gateway.services import Services, provider_embedding_model
from gateway.upstreams.router import Router
from middleware.input_guardrails import ChunkScreen, chunk_screen

NAME = "retrieval"
log = logging.getLogger("rag_gateway.retrieval")
FOLLOW_UP_RE = re.compile(
    r"^\s*(and|or|but|also|what about|how about|same for|then)\b"
    r"|\b(it|its|that|this|those|these|they|them|there)\b",
    re.I,
)
SHORT_QUESTION_WORDS = 5


@dataclass(slots=True)
class RetrievalOutcome:
    """What the stage found and injected; later stages (refusal, logging, replay) read it."""

    query: str
    result: RetrievalResult
    injected: list[Hit] = field(default_factory=list)
    conflicts: list[ConflictGroup] = field(default_factory=list)  # members index `injected`
    preferred: set[int] = field(default_factory=set)  # injected indexes preferred as newest
    refused: bool = False
    # Found by the file_search tool in vector stores: each citation names its file (a store
    # chunk's doc_id is its file's id, its source the file's name).
    cite_files: bool = False

    def conflict_of(self) -> dict[int, int]:
        """injected index -> 1-based conflict group number."""
        return {member: g for g, group in enumerate(self.conflicts, start=1) for member in group.members}

    def citations(self) -> list[dict[str, Any]]:
        groups = self.conflict_of()
        cited = []
        for i, hit in enumerate(self.injected):
            entry = citation(i + 1, hit)
            if self.cite_files:
                entry["file_id"] = hit.chunk.doc_id
                entry["filename"] = os.path.basename(hit.chunk.source) or hit.chunk.source
            if i in groups:
                entry["conflict_group"] = groups[i]
                entry["preferred"] = i in self.preferred
            cited.append(entry)
        return cited


def retrieval_failure(
    ctx: RequestContext, exc: VectorStoreUnavailable | EmbeddingUnavailable
) -> GatewayError:
    """What the client gets when the search could not run: nothing is sent to a chat model."""
    log.warning("retrieval for tenant %s (request %s): %s", ctx.tenant, ctx.request_id, exc)
    ctx.decide(NAME, "unavailable", error=str(exc))
    if isinstance(exc, EmbeddingUnavailable):
        return GatewayError(
            502,
            f"Retrieval could not embed the question ({exc}). Nothing was sent to a chat model; "
            "retry shortly.",
            type="server_error",
            code="embedding_unavailable",
        )
    return GatewayError(
        503,
        "Retrieval is unavailable right now: the vector store did not answer. Nothing was sent to a "
        "model; retry shortly.",
        type="server_error",
        code="retrieval_unavailable",
        headers={"Retry-After": "2"},
    )


def citation(number: int, hit: Hit) -> dict[str, Any]:
    chunk = hit.chunk
    return {
        "id": number,
        "chunk_id": chunk.id,
        "source": chunk.source,
        "title": chunk.title,
        "section": chunk.section,
        "page": chunk.page,
        "date": chunk.doc_date,
        "score": round(hit.fused_score, 6),
    }


def search_query(messages: list[dict[str, Any]], rewrite_follow_ups: bool) -> str:
    """The last user turn, expanded with the previous one when it reads as a follow-up."""
    user_turns = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    user_turns = [t.strip() for t in user_turns if t.strip()]
    if not user_turns:
        return ""
    last = user_turns[-1]
    if rewrite_follow_ups and len(user_turns) > 1:
        if len(last.split()) <= SHORT_QUESTION_WORDS or FOLLOW_UP_RE.search(last):
            return f"{user_turns[-2]} {last}"
    return last


def select_within_budget(hits: list[Hit], budget_tokens: int, counter: TokenCounter) -> list[Hit]:
    """Top hits in fused order until the token budget is spent (the first always goes in)."""
    if not hits:
        return []
    counts = counter.count_many([h.chunk.text for h in hits])
    selected: list[Hit] = []
    used = 0
    for hit, count in zip(hits, counts, strict=True):
        if selected and used + count > budget_tokens:
            continue  # a smaller later chunk may still fit
        selected.append(hit)
        used += count
    return selected


def format_sources(hits: list[Hit], conflicts: list[ConflictGroup] | None = None) -> str:
    partners: dict[int, list[int]] = {}
    for group in conflicts or []:
        for member in group.members:
            partners[member] = [m + 1 for m in group.members if m != member]
    blocks = []
    for i, hit in enumerate(hits):
        chunk = hit.chunk
        meta = [f"Source: {chunk.source}"]
        if chunk.section:
            meta.append(f"Section: {chunk.section}")
        if chunk.page:
            meta.append(f"Page: {chunk.page}")
        if chunk.doc_date:
            meta.append(f"Date: {chunk.doc_date}")
        if i in partners:
            meta.append("Conflicts with " + ", ".join(f"[{n}]" for n in partners[i]))
        blocks.append(f"[{i + 1}] {' | '.join(meta)}\n{chunk.text.strip()}")
    return "\n\n".join(blocks)


def conflict_instructions(outcome: RetrievalOutcome, settings: RetrievalPolicy) -> str:
    lines = [settings.conflict_note]
    for g, group in enumerate(outcome.conflicts, start=1):
        values = "; ".join(f"[{m + 1}] says {value}" for m, value in sorted(group.values.items()))
        line = f"Conflict {g} ({group.subject}): {values}."
        if not any(outcome.injected[m].chunk.doc_date for m in group.members):
            line += " None of these sources states a date or version: which is newer is unknown."
        newest_member = next((m for m in group.members if m in outcome.preferred), None)
        if newest_member is not None:
            line += f" Prefer [{newest_member + 1}], the newest source."
        lines.append(line)
    return "\n".join(lines)


async def with_citations(events: Events, citations: list[dict[str, Any]]) -> Events:
    """Relay the stream; at its end, the citations (a chat stream gets them in a last chunk)."""
    async for event in events:
        yield event
    yield Citations(citations)


def screen_for_injection(screen: ChunkScreen | None, ctx: RequestContext, hits: list[Hit]) -> list[Hit]:
    """Instructions hidden in retrieved chunks (indirect prompt injection), checked before injection."""
    if screen is None or not hits:
        return hits
    findings = screen.scan(ctx, [h.chunk.text for h in hits])
    if not findings:
        return hits
    if screen.action == "block":
        raise GatewayError(
            400,
            "A retrieved document contains instructions aimed at the model (indirect "
            "prompt injection), so this request was blocked.",
            code="content_policy_violation",
        )
    if screen.action == "strip":
        flagged = {f.index for f in findings}
        return [h for i, h in enumerate(hits) if i not in flagged]
    return hits


def inject_sources(
    ctx: RequestContext, outcome: RetrievalOutcome, settings: RetrievalPolicy, stage: str
) -> None:
    """The outcome's sources (and any conflicts between them) as one system message."""
    if not outcome.injected:
        return
    chunks = [h.chunk for h in outcome.injected]
    outcome.conflicts = find_conflicts(chunks)
    if settings.prefer_newest_on_conflict:
        # An undated group has no newest member: nothing is preferred, the note says why.
        outcome.preferred = {
            newest(chunks, group)
            for group in outcome.conflicts
            if any(chunks[m].doc_date for m in group.members)
        }
    system = settings.template.replace("{sources}", format_sources(outcome.injected, outcome.conflicts))
    if outcome.conflicts:
        system += "\n\n" + conflict_instructions(outcome, settings)
        groups = [
            {"chunks": [chunks[m].id for m in group.members], "subject": group.subject}
            for group in outcome.conflicts
        ]
        ctx.decide(stage, "conflicts", groups=groups)
    ctx.request.add_system(system)


def attach_citations(response: GatewayResponse, outcome: RetrievalOutcome) -> None:
    """The sources as cited, on the answer (a stream gets them at its end)."""
    if outcome.refused or response.status != 200:
        return
    citations = outcome.citations()
    if response.is_stream:
        response.map_events(lambda events: with_citations(events, citations))
    else:
        completion = response.completion()
        completion.citations = citations
        response.set_completion(completion)


@dataclass(frozen=True, slots=True)
class QueryCost:
    """The query's embedding call when a provider serves the embedding model: its tokens, counted
    with the model's tokenizer (the embedder does not report usage), priced by admission."""

    model: str
    pricing: Pricing

    def of(self, query: str) -> SideCall:
        return SideCall(self.model, Usage(self.pricing.count_text(self.model, query), 0))


class RetrievalStage:
    name = NAME

    def __init__(
        self,
        settings: RetrievalPolicy,
        service: RetrievalService,
        counter: TokenCounter,
        tracer: Tracer | None = None,
        router: Router | None = None,
        screen: ChunkScreen | None = None,
        warmup: CorpusWarmup | None = None,
        query_cost: QueryCost | None = None,
    ) -> None:
        self.settings = settings
        self.query_cost = query_cost  # a provider embeds each query: booked to the tenant
        self.warmup = warmup  # seed corpora still being built: their tenants wait
        self.service = service
        self.counter = counter
        self.tracer = tracer
        self.router = router  # for the LLM reranker
        self.screen = screen  # the tenant's input guardrails for indirect prompt injection

    @property
    def depth(self) -> int:
        """How many fused hits the search returns: the top_k, or more when a reranker picks from them."""
        rerank = self.settings.rerank
        return max(self.settings.top_k, rerank.candidates) if rerank.model else self.settings.top_k

    async def search(self, ctx: RequestContext, query: str) -> RetrievalResult:
        settings = self.settings
        if self.tracer is None:
            return await self.service.search(
                ctx.tenant, query, self.depth, settings.candidates, settings.filters
            )
        collection = self.service.store.tenant(ctx.tenant).collection_name
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "retrieval",
            "gen_ai.data_source.id": collection,
            "gen_ai.retrieval.top_k": self.depth,
            "gateway.tenant": ctx.tenant,
        }
        if ctx.policy.log_content:
            attributes["gen_ai.retrieval.query.text"] = query
        with self.tracer.start_as_current_span(f"retrieval {collection}", attributes=attributes) as span:
            result = await self.service.search(
                ctx.tenant, query, self.depth, settings.candidates, settings.filters
            )
            documents = [
                {
                    "id": h.chunk.id,
                    "score": round(h.fused_score, 6),
                    "rank": h.rank,
                    "dense_score": h.dense_score,
                    "dense_rank": h.dense_rank,
                    "bm25_score": h.bm25_score,
                    "bm25_rank": h.bm25_rank,
                }
                for h in result.hits
            ]
            span.set_attributes(
                {
                    "gen_ai.retrieval.documents": orjson.dumps(documents).decode(),
                    "gateway.retrieval.fused_order": result.fused_order[:50],
                    "gateway.retrieval.confidence": result.confidence,
                    "gateway.retrieval.corpus_version": result.corpus_version,
                }
            )
            return result

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        settings = self.settings
        if ctx.request.file_search is not None:
            # The client named the stores to search: its file_search tool searched them instead.
            ctx.decide(NAME, "skipped", reason="the request's file_search tool searched its vector stores")
            return await call_next(ctx)
        if self.warmup is not None:
            self.warmup.check(ctx.tenant)
        query = search_query(ctx.request.messages, settings.rewrite_follow_ups)
        if not query:
            ctx.decide(NAME, "skipped", reason="no user text to search for")
            return await call_next(ctx)
        try:
            result = await self.search(ctx, query)
        except (VectorStoreUnavailable, EmbeddingUnavailable) as exc:
            raise retrieval_failure(ctx, exc) from exc
        if self.query_cost is not None:
            ctx.side_calls.append(self.query_cost.of(query))
        ranked = result.hits
        if settings.rerank.model and self.router is not None:
            ranked = await llm_rerank(self.router, ctx, settings.rerank.model, query, ranked)
        outcome = RetrievalOutcome(
            query,
            result,
            select_within_budget(ranked[: settings.top_k], settings.max_context_tokens, self.counter),
        )
        ctx.retrieval = outcome
        ctx.response_headers["x-gateway-confidence"] = f"{result.confidence:.3f}"
        ctx.decide(
            NAME,
            "retrieved",
            # The question is content: kept only where the policy allows it (replay needs it).
            query=query if ctx.policy.log_content else None,
            query_sha256=hashlib.sha256(query.encode()).hexdigest()[:16],
            corpus_version=result.corpus_version,
            top_k=self.depth,
            candidates=settings.candidates,
            filters=dict(settings.filters),
            confidence=round(result.confidence, 4),
            hits=[
                {
                    "chunk_id": h.chunk.id,
                    "rank": h.rank,
                    "fused": round(h.fused_score, 6),
                    "dense": h.dense_score,
                    "dense_rank": h.dense_rank,
                    "bm25": h.bm25_score,
                    "bm25_rank": h.bm25_rank,
                }
                for h in result.hits
            ],
            injected=[h.chunk.id for h in outcome.injected],
        )
        outcome.injected = screen_for_injection(self.screen, ctx, outcome.injected)
        inject_sources(ctx, outcome, settings, NAME)
        response = await call_next(ctx)
        attach_citations(response, outcome)
        return response


def build(policy: Policy, services: Services) -> RetrievalStage | None:
    if not policy.retrieval.enabled:
        return None
    service, counter = services.retrieval, services.token_counter
    if service is None or counter is None:
        raise PoliciesNotApplicable(
            f"tenant {policy.tenant!r} turns retrieval on (retrieval.enabled: true in its policy), but "
            "gateway.yaml has retrieval.enabled: false: remove one of the two"
        )
    tracer = services.tracing.tracer if services.tracing is not None else None
    embedding_model = provider_embedding_model(services.config)
    query_cost = QueryCost(embedding_model, services.pricing) if embedding_model is not None else None
    return RetrievalStage(
        policy.retrieval, service, counter, tracer, services.router, chunk_screen(policy), services.warmup,
        query_cost,
    )  # fmt: skip
