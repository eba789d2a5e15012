"""`rag-gateway eval answers`: answer-level checks through the tenant's real chain.

For each golden query the request goes through the tenant's chain in-process (retrieval, refusal,
the upstream model). Checked for every answer: each [n] it cites points to a source that was
injected; whether it cites a document the golden set marks relevant; whether the gateway refused.
Optionally a judge model (through the gateway's own upstream config) says whether the answer is
supported by its sources. The built-in `local-extractive` model gives a deterministic baseline.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.evaluation.golden import GoldenQuery
from gateway.policy import Policy

CITATION_RE = re.compile(r"\[(\d{1,3})\]")
JUDGE_PROMPT = (
    "You check answers for a retrieval system. Reply with exactly one word: SUPPORTED if every claim in "
    "the answer is backed by the sources, otherwise UNSUPPORTED.\n\nSources:\n{sources}\n\nAnswer:\n{answer}"
)


@dataclass(slots=True)
class AnswerOutcome:
    id: str
    query: str
    answerable: bool
    refused: bool
    cited: list[int]
    injected: int
    invalid_citations: list[int]
    cites_relevant: bool
    supported: bool | None
    error: str | None
    latency_ms: float


def cited_numbers(text: str) -> list[int]:
    return sorted({int(n) for n in CITATION_RE.findall(text)})


def _ctx(policy: Policy, body: dict[str, Any], request_id: str) -> RequestContext:
    return RequestContext.internal(policy, body, request_id, key_id="eval")


async def evaluate_answers(
    gateway: Any, policy: Policy, model: str, queries: list[GoldenQuery], judge: str | None = None
) -> list[AnswerOutcome]:
    handler = gateway.handler_for(policy.tenant, "chat")
    outcomes = []
    for q in queries:
        started = time.perf_counter()
        ctx = _ctx(
            policy, {"model": model, "messages": [{"role": "user", "content": q.query}]}, f"eval-{q.id}"
        )
        try:
            completion = (await handler(ctx)).completion()
        except GatewayError as exc:
            outcomes.append(
                AnswerOutcome(
                    q.id,
                    q.query,
                    q.answerable,
                    False,
                    [],
                    0,
                    [],
                    False,
                    None,
                    f"{exc.status} {exc.code}",
                    0.0,
                )
            )
            continue
        refused = ctx.response_headers.get("x-gateway-refused") is not None
        text = completion.text
        citations = completion.citations or []
        numbers = cited_numbers(text)
        invalid = [n for n in numbers if not 1 <= n <= len(citations)]
        cited_docs = {c["chunk_id"].rsplit("#", 1)[0] for c in citations if c.get("id") in numbers}
        supported = None
        if judge and not refused and citations:
            supported = await _judge(gateway, policy, judge, ctx, text)
        outcomes.append(
            AnswerOutcome(
                q.id,
                q.query,
                q.answerable,
                refused,
                numbers,
                len(citations),
                invalid,
                bool(cited_docs & set(q.relevant)),
                supported,
                None,
                round((time.perf_counter() - started) * 1000, 1),
            )
        )
    return outcomes


async def _judge(
    gateway: Any, policy: Policy, judge: str, answered: RequestContext, answer: str
) -> bool | None:
    sources = next((m["content"] for m in answered.request.messages if m.get("role") == "system"), "")
    body = {
        "model": judge,
        "temperature": 0,
        "messages": [{"role": "user", "content": JUDGE_PROMPT.format(sources=sources, answer=answer)}],
    }
    ctx = _ctx(policy, body, f"{answered.request_id}-judge")
    try:
        verdict = (await gateway.services.router.call(ctx)).completion()
    except GatewayError:
        return None
    word = verdict.text.strip().upper()
    return True if word.startswith("SUPPORTED") else False if word.startswith("UNSUPPORTED") else None


def summarise_answers(outcomes: list[AnswerOutcome]) -> dict[str, Any]:
    answered = [o for o in outcomes if not o.refused and o.error is None]
    answerable = [o for o in outcomes if o.answerable]
    unanswerable = [o for o in outcomes if not o.answerable]
    judged = [o for o in answered if o.supported is not None]

    def share(items: list[Any], total: int) -> float | None:
        return round(len(items) / total, 4) if total else None

    return {
        "queries": len(outcomes),
        "answered": len(answered),
        "errors": sum(o.error is not None for o in outcomes),
        "citation_validity": share([o for o in answered if not o.invalid_citations], len(answered)),
        "answers_with_citations": share([o for o in answered if o.cited], len(answered)),
        "answerable_citing_relevant": share([o for o in answerable if o.cites_relevant], len(answerable)),
        "refusal_rate_answerable": share([o for o in answerable if o.refused], len(answerable)),
        "refusal_rate_unanswerable": share([o for o in unanswerable if o.refused], len(unanswerable)),
        "supported_rate": share([o for o in judged if o.supported], len(judged)),
        "invalid": [asdict(o) for o in answered if o.invalid_citations],
    }
