"""`rag-gateway eval calibrate`: choose min_confidence from data and write it into the policy.

Refusal precision is the share of refused questions that were really unanswerable. The chosen
threshold is the highest one whose precision still meets the target: it refuses as many
unanswerable questions as possible without refusing too many answerable ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.evaluation.retrieval_eval import QueryOutcome


@dataclass(slots=True)
class TradeOff:
    threshold: float
    refusal_precision: float | None  # None when nothing is refused
    refused_unanswerable: float  # recall of refusal
    refused_answerable: float


def trade_offs(outcomes: list[QueryOutcome], steps: int = 100) -> list[TradeOff]:
    answerable = [o.confidence for o in outcomes if o.answerable]
    unanswerable = [o.confidence for o in outcomes if not o.answerable]
    rows = []
    for i in range(steps + 1):
        t = round(i / steps, 4)
        refused_a = sum(c < t for c in answerable)
        refused_u = sum(c < t for c in unanswerable)
        refused = refused_a + refused_u
        rows.append(
            TradeOff(
                t,
                refused_u / refused if refused else None,
                refused_u / len(unanswerable) if unanswerable else 0.0,
                refused_a / len(answerable) if answerable else 0.0,
            )
        )
    return rows


def choose_threshold(rows: list[TradeOff], target_precision: float) -> TradeOff | None:
    meeting = [r for r in rows if r.refusal_precision is not None and r.refusal_precision >= target_precision]
    return max(meeting, key=lambda r: r.threshold) if meeting else None


def format_table(rows: list[TradeOff], every: int = 5) -> str:
    lines = [
        "| threshold | refusal precision | unanswerable refused | answerable refused |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows[::every]:
        precision = "-" if row.refusal_precision is None else f"{row.refusal_precision:.3f}"
        lines.append(
            f"| {row.threshold:.2f} | {precision} | {row.refused_unanswerable:.3f} | "
            f"{row.refused_answerable:.3f} |"
        )
    return "\n".join(lines)


MIN_CONFIDENCE_LINE = re.compile(r"^(\s+min_confidence:\s*)([0-9.]+)(.*)$", re.M)


def write_min_confidence(policy_file: Path, value: float) -> None:
    """Set retrieval.min_confidence in a tenant's policy, keeping the file's comments when possible."""
    text = policy_file.read_text(encoding="utf-8") if policy_file.exists() else ""
    data = yaml.safe_load(text) or {}
    retrieval = data.get("retrieval")
    if (
        isinstance(retrieval, dict)
        and "min_confidence" in retrieval
        and len(MIN_CONFIDENCE_LINE.findall(text)) == 1
    ):
        policy_file.write_text(
            MIN_CONFIDENCE_LINE.sub(lambda m: f"{m.group(1)}{value}{m.group(3)}", text), encoding="utf-8"
        )
        return
    data.setdefault("retrieval", {})
    if not isinstance(data["retrieval"], dict):
        raise ValueError(f"{policy_file}: 'retrieval' is not a mapping")
    data["retrieval"]["min_confidence"] = value
    policy_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
