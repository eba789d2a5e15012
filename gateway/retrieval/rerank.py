"""LLM reranking through the gateway's own upstreams (no offline cross-encoder ships in a package).

The fused candidates are shown to a rerank model as numbered passages; it answers with the numbers
in order of relevance. Anything it leaves out keeps its fused order after the ones it ranked; an
unusable answer (or a failed call) keeps the fused order entirely, so reranking can only reorder.
"""

from __future__ import annotations

import re
from dataclasses import replace

from gateway.context import RequestContext, SideCall
from gateway.errors import GatewayError
from gateway.retrieval.index import Hit
from gateway.upstreams.router import Router

PROMPT = (
    "Rank the passages by how well they answer the question. Reply with the passage numbers only, most "
    "relevant first, as a JSON list such as [3, 1, 2]. Leave out passages that do not help.\n\n"
    "Question: {query}\n\n{passages}"
)
NUMBER_RE = re.compile(r"\d+")
PASSAGE_CHARS = 1200  # enough of a ~240-token chunk to judge it, bounded cost
RERANK_MAX_TOKENS = 200


def worst_case_tokens(candidates: int) -> tuple[int, int]:
    """The most a rerank call may take beyond the question (input, output), for the budget's
    reservation: every passage at 2 characters a token (text is rarely denser), plus the prompt."""
    return candidates * (PASSAGE_CHARS // 2) + len(PROMPT) // 2, RERANK_MAX_TOKENS


def rerank_order(answer: str, count: int) -> list[int] | None:
    """0-based positions from the model's answer, or None when it named no valid passage."""
    seen: list[int] = []
    for token in NUMBER_RE.findall(answer):
        n = int(token) - 1
        if 0 <= n < count and n not in seen:
            seen.append(n)
    return seen or None


async def llm_rerank(
    router: Router, ctx: RequestContext, model: str, query: str, hits: list[Hit]
) -> list[Hit]:
    if len(hits) < 2:
        return hits
    passages = "\n\n".join(f"[{i + 1}] {h.chunk.text[:PASSAGE_CHARS]}" for i, h in enumerate(hits))
    body = {
        "model": model,
        "temperature": 0,
        "max_tokens": RERANK_MAX_TOKENS,
        "messages": [{"role": "user", "content": PROMPT.format(query=query, passages=passages)}],
    }
    rerank_ctx = RequestContext.internal(ctx.policy, body, f"{ctx.request_id}-rerank", ctx.key_id)
    try:
        completion = (await router.call(rerank_ctx)).completion()
    except (GatewayError, ValueError) as exc:
        ctx.decide("retrieval", "rerank_failed", model=model, reason=str(exc)[:200])
        return hits
    finally:
        ctx.upstream_s += rerank_ctx.upstream_s
        ctx.attempts.extend(rerank_ctx.attempts)
        if rerank_ctx.upstream_span is not None:
            rerank_ctx.upstream_span.end()
    if completion.usage is not None:
        # Booked to the tenant with the request that needed it (see middleware.admission).
        ctx.side_calls.append(SideCall(model, completion.usage))
    text = completion.text
    order = rerank_order(text, len(hits))
    if order is None:
        ctx.decide("retrieval", "rerank_unusable", model=model)
        return hits
    ranked = [hits[i] for i in order] + [h for i, h in enumerate(hits) if i not in order]
    ctx.decide(
        "retrieval",
        "reranked",
        model=model,
        before=[h.chunk.id for h in hits],
        after=[h.chunk.id for h in ranked],
    )
    return [replace(h, rank=i + 1) for i, h in enumerate(ranked)]
