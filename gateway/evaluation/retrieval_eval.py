"""`rag-gateway eval retrieval`: run a golden set against a tenant's index and score it.

Ranking metrics are computed at document level on the answerable queries (a document's rank is
that of its best chunk). Refusal is what the gateway would do: confidence below the threshold.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from gateway.evaluation.golden import GoldenQuery
from gateway.evaluation.metrics import auroc, mrr_at, ndcg_at, percentile, recall_at
from gateway.retrieval.index import RetrievalResult
from gateway.retrieval.service import RetrievalService

RANK_DEPTH = 100
# Direction of each gated metric: +1 higher is better, -1 lower is better.
GATED_METRICS = {
    "ndcg_at_10": 1,
    "mrr_at_10": 1,
    "recall_at_10": 1,
    "recall_at_100": 1,
    "refusal_rate_answerable": -1,
    "refusal_rate_unanswerable": 1,
    "confidence_auroc": 1,
}


@dataclass(slots=True)
class QueryOutcome:
    id: str
    query: str
    answerable: bool
    relevant: list[str]
    top_docs: list[str]  # the first 10 distinct documents retrieved
    first_relevant_rank: int | None
    ndcg_at_10: float
    mrr_at_10: float
    recall_at_10: float
    recall_at_100: float
    confidence: float
    refused: bool
    latency_ms: float


@dataclass(slots=True)
class EvalReport:
    tenant: str
    corpus_version: int
    threshold: float
    metrics: dict[str, Any]
    queries: list[QueryOutcome]

    def to_dict(self, with_queries: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "tenant": self.tenant,
            "corpus_version": self.corpus_version,
            "threshold": self.threshold,
            **self.metrics,
        }
        if with_queries:
            data["queries"] = [asdict(q) for q in self.queries]
        return data

    def misses(self) -> list[QueryOutcome]:
        """Queries the gateway gets wrong: relevant doc not in the top 10, or the wrong refusal call."""
        return [
            q
            for q in self.queries
            if (q.answerable and (q.refused or q.first_relevant_rank is None or q.first_relevant_rank > 10))
            or (not q.answerable and not q.refused)
        ]


def ranked_documents(result: RetrievalResult) -> list[str]:
    seen: dict[str, None] = {}
    for hit in result.hits:
        seen.setdefault(hit.chunk.doc_id, None)
    return list(seen)


def evaluate(
    service: RetrievalService,
    tenant: str,
    queries: list[GoldenQuery],
    threshold: float,
    candidates: int = 100,
    where: dict[str, Any] | None = None,
) -> EvalReport:
    outcomes: list[QueryOutcome] = []
    corpus_version = service.store.tenant(tenant).corpus_version()
    service.search_sync(tenant, "warm-up", 1, candidates, where)  # first-call costs are not latency
    for q in queries:
        started = time.perf_counter()
        result = service.search_sync(tenant, q.query, RANK_DEPTH, max(candidates, RANK_DEPTH), where)
        latency_ms = (time.perf_counter() - started) * 1000
        ranked = ranked_documents(result)
        relevant = set(q.relevant)
        first = next((i + 1 for i, doc in enumerate(ranked) if doc in relevant), None)
        outcomes.append(
            QueryOutcome(
                id=q.id,
                query=q.query,
                answerable=q.answerable,
                relevant=q.relevant,
                top_docs=ranked[:10],
                first_relevant_rank=first,
                ndcg_at_10=ndcg_at(ranked, relevant, 10),
                mrr_at_10=mrr_at(ranked, relevant, 10),
                recall_at_10=recall_at(ranked, relevant, 10),
                recall_at_100=recall_at(ranked, relevant, 100),
                confidence=round(result.confidence, 4),
                refused=result.confidence < threshold,
                latency_ms=round(latency_ms, 2),
            )
        )
    return EvalReport(tenant, corpus_version, threshold, summarise(outcomes), outcomes)


def summarise(outcomes: list[QueryOutcome]) -> dict[str, Any]:
    answerable = [o for o in outcomes if o.answerable]
    unanswerable = [o for o in outcomes if not o.answerable]

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    latencies = [o.latency_ms for o in outcomes]
    auc = auroc([o.confidence for o in answerable], [o.confidence for o in unanswerable])
    return {
        "queries": len(outcomes),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "ndcg_at_10": mean([o.ndcg_at_10 for o in answerable]),
        "mrr_at_10": mean([o.mrr_at_10 for o in answerable]),
        "recall_at_10": mean([o.recall_at_10 for o in answerable]),
        "recall_at_100": mean([o.recall_at_100 for o in answerable]),
        "refusal_rate_answerable": mean([float(o.refused) for o in answerable]),
        "refusal_rate_unanswerable": mean([float(o.refused) for o in unanswerable]),
        "confidence_auroc": None if auc is None else round(auc, 4),
        "latency_ms_p50": round(percentile(latencies, 50), 2),
        "latency_ms_p95": round(percentile(latencies, 95), 2),
        "latency_ms_p99": round(percentile(latencies, 99), 2),
    }


def compare_to_baseline(metrics: dict[str, Any], baseline: dict[str, Any], tolerance: float) -> list[str]:
    """Each gated metric that got worse than the baseline by more than the tolerance, as a line."""
    regressions = []
    for name, direction in GATED_METRICS.items():
        before, after = baseline.get(name), metrics.get(name)
        if before is None or after is None:
            continue
        drop = (before - after) * direction
        if drop > tolerance:
            regressions.append(
                f"{name}: {after:.4f} vs baseline {before:.4f} (worse by {drop:.4f} > {tolerance})"
            )
    return regressions


def format_report(report: EvalReport) -> str:
    m = report.metrics

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [
        f"tenant {report.tenant} (corpus version {report.corpus_version}): {m['queries']} queries, "
        f"{m['answerable']} answerable, {m['unanswerable']} unanswerable; "
        f"refusal threshold {report.threshold}",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    for name in (
        "ndcg_at_10",
        "mrr_at_10",
        "recall_at_10",
        "recall_at_100",
        "refusal_rate_answerable",
        "refusal_rate_unanswerable",
        "confidence_auroc",
        "latency_ms_p50",
        "latency_ms_p95",
        "latency_ms_p99",
    ):
        lines.append(f"| {name} | {fmt(m.get(name))} |")
    misses = report.misses()
    lines += ["", f"misses ({len(misses)}):"]
    if misses:
        lines += [
            "| id | answerable | first relevant rank | confidence | refused | query |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for q in misses:
            lines.append(
                f"| {q.id} | {q.answerable} | {q.first_relevant_rank or '-'} | {q.confidence:.3f} | "
                f"{q.refused} | {q.query[:80]} |"
            )
    return "\n".join(lines)
