"""`rag-gateway replay REQUEST_ID`: reproduce a logged request's retrieval (and optionally its answer).

Retrieval is deterministic for a given corpus version: the same query against the same corpus
returns the same chunks in the same order. Replay re-runs it and prints whether that held, with
a rank-by-rank diff when it did not (and says so when the corpus has changed since).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.retrieval.service import RetrievalService


@dataclass(slots=True)
class ReplayResult:
    identical: bool
    logged: list[str]
    replayed: list[str]
    logged_version: int | None
    current_version: int
    lines: list[str] = field(default_factory=list)


def replay_retrieval(entry: dict[str, Any], service: RetrievalService) -> ReplayResult:
    retrieval = entry.get("retrieval")
    if not retrieval:
        raise ValueError(
            f"request {entry.get('request_id')} made no retrieval (retrieval off, or cached/blocked)"
        )
    tenant = entry["tenant"]
    top_k = int(retrieval.get("top_k") or len(retrieval.get("hits", [])) or 5)
    candidates = int(retrieval.get("candidates") or 100)
    result = service.search_sync(
        tenant, retrieval["query"], top_k, candidates, retrieval.get("filters") or None
    )
    logged = [h["chunk_id"] for h in retrieval.get("hits", [])]
    replayed = [h.chunk.id for h in result.hits]
    logged_version = retrieval.get("corpus_version")
    outcome = ReplayResult(logged == replayed, logged, replayed, logged_version, result.corpus_version)
    lines = outcome.lines
    lines.append(f"request {entry['request_id']} tenant {tenant} query {retrieval['query']!r}")
    if logged_version != result.corpus_version:
        lines.append(
            f"note: the corpus changed since (logged version {logged_version}, now "
            f"{result.corpus_version}); differences may come from that"
        )
    if outcome.identical:
        lines.append(
            f"identical: the same {len(logged)} chunks in the same order "
            f"(corpus version {result.corpus_version})"
        )
        return outcome
    lines.append("different:")
    lines.append(f"{'rank':>4}  {'logged':<48} replayed")
    for rank in range(max(len(logged), len(replayed))):
        before = logged[rank] if rank < len(logged) else "-"
        after = replayed[rank] if rank < len(replayed) else "-"
        marker = " " if before == after else "*"
        lines.append(f"{rank + 1:>4}{marker} {before:<48} {after}")
    gone = [c for c in logged if c not in replayed]
    new = [c for c in replayed if c not in logged]
    if gone:
        lines.append("no longer retrieved: " + ", ".join(gone))
    if new:
        lines.append("newly retrieved: " + ", ".join(new))
    return outcome
