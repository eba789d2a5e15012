"""The eval harness: metrics, golden files, importers, calibration, and the CI gate on the sample corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.evaluation.calibrate import TradeOff, choose_threshold, write_min_confidence
from gateway.evaluation.datasets import hold_out
from gateway.evaluation.golden import GoldenError, load_golden
from gateway.evaluation.metrics import auroc, mrr_at, ndcg_at, percentile, recall_at
from gateway.evaluation.retrieval_eval import compare_to_baseline

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=cwd,
    )


def test_ranking_metrics() -> None:
    ranked = ["a", "x", "b", "y"]
    assert ndcg_at(ranked, {"a"}, 10) == 1.0
    assert ndcg_at(ranked, {"b"}, 10) == pytest.approx(1 / 2)  # rank 3: 1/log2(4)
    assert ndcg_at(ranked, {"a", "b"}, 2) == pytest.approx(1 / (1 + 1 / 1.5849625))
    assert mrr_at(ranked, {"b"}, 10) == pytest.approx(1 / 3) and mrr_at(ranked, {"b"}, 2) == 0.0
    assert recall_at(ranked, {"a", "b", "z"}, 3) == pytest.approx(2 / 3)


def test_auroc_counts_ties_half_and_handles_empty_sides() -> None:
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.9]) == 0.0
    assert auroc([0.5, 0.5], [0.5, 0.5]) == 0.5
    assert auroc([0.9, 0.4], [0.5]) == 0.5
    assert auroc([], [0.1]) is None
    assert percentile([1, 2, 3, 4], 50) == 2.5


def test_golden_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text('{"query": "a", "relevant": ["d"]}\n{"query": "b", "answerable": true}\n')
    with pytest.raises(GoldenError, match=r"g\.jsonl:2: an answerable query needs"):
        load_golden(path)
    path.write_text('{"query": "a", "relevant": "d"}\n')
    with pytest.raises(GoldenError, match=r"g\.jsonl:1"):
        load_golden(path)
    path.write_text('{"query": "a", "relevant": [], "answerable": false}\n')
    assert load_golden(path)[0].answerable is False


def test_baseline_gate_catches_drops_in_the_right_direction() -> None:
    baseline = {"ndcg_at_10": 0.80, "refusal_rate_answerable": 0.05, "confidence_auroc": 0.9}
    assert (
        compare_to_baseline(
            {"ndcg_at_10": 0.79, "refusal_rate_answerable": 0.06, "confidence_auroc": 0.9}, baseline, 0.02
        )
        == []
    )
    regressions = compare_to_baseline(
        {"ndcg_at_10": 0.70, "refusal_rate_answerable": 0.20, "confidence_auroc": 0.95}, baseline, 0.02
    )
    assert [r.split(":")[0] for r in regressions] == ["ndcg_at_10", "refusal_rate_answerable"]


def test_hold_out_only_takes_queries_whose_documents_nobody_else_needs() -> None:
    qrels = {"q1": {"d1"}, "q2": {"d1"}, "q3": {"d3"}, "q4": {"d4", "d5"}, "q5": {"d6"}}
    held = hold_out(qrels, 0.6, seed=1)
    assert len(held) == 3 and held <= {"q3", "q4", "q5"}


def test_choose_threshold_is_the_highest_meeting_the_precision() -> None:
    rows = [
        TradeOff(0.1, 1.0, 0.2, 0.0),
        TradeOff(0.3, 0.95, 0.6, 0.03),
        TradeOff(0.5, 0.8, 0.9, 0.2),
        TradeOff(0.0, None, 0.0, 0.0),
    ]
    assert choose_threshold(rows, 0.9).threshold == 0.3
    assert choose_threshold(rows, 1.01) is None


def test_write_min_confidence_keeps_comments(tmp_path: Path) -> None:
    policy = tmp_path / "acme.yaml"
    policy.write_text(
        "# our tenant\ntenant: acme\nretrieval:\n  enabled: true  # on\n  min_confidence: 0.5\n"
    )
    write_min_confidence(policy, 0.37)
    text = policy.read_text()
    assert (
        "# our tenant" in text
        and "# on" in text
        and yaml.safe_load(text)["retrieval"]["min_confidence"] == 0.37
    )
    bare = tmp_path / "bare.yaml"
    bare.write_text("tenant: bare\n")
    write_min_confidence(bare, 0.2)
    assert yaml.safe_load(bare.read_text())["retrieval"] == {"min_confidence": 0.2}


def test_import_beir_and_eval_on_a_small_dataset(tmp_path: Path) -> None:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    topics = [
        "volcanoes erupt magma",
        "penguins live in antarctica",
        "bees make honey from nectar",
        "glaciers carve valleys",
        "tides follow the moon",
        "ferns reproduce with spores",
    ]
    corpus = [
        {"_id": f"d{i}", "title": t.split()[0].title(), "text": f"Facts: {t}. More about {t}."}
        for i, t in enumerate(topics)
    ]
    (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    queries = [
        {"_id": f"q{i}", "text": f"what do we know about {t.split()[0]}"} for i, t in enumerate(topics)
    ]
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(topics)))
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"vector_store": {"path": str(tmp_path / "chroma")}}))
    golden = tmp_path / "golden.jsonl"
    imported = run_cli(
        "eval",
        "import-beir",
        str(beir),
        "--config",
        str(config),
        "--tenant",
        "sci",
        "--golden-out",
        str(golden),
        "--unanswerable-fraction",
        "0.34",
    )
    assert imported.returncode == 0, imported.stderr
    rows = [json.loads(line) for line in golden.read_text().splitlines()]
    assert len(rows) == 6 and sum(not r["answerable"] for r in rows) == 2
    result = run_cli(
        "eval", "retrieval", "--config", str(config), "--tenant", "sci", "--golden", str(golden), "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in (
        "ndcg_at_10",
        "mrr_at_10",
        "recall_at_10",
        "recall_at_100",
        "refusal_rate_answerable",
        "refusal_rate_unanswerable",
        "confidence_auroc",
        "latency_ms_p50",
    ):
        assert key in report
    assert report["answerable"] == 4 and report["ndcg_at_10"] == 1.0  # each topic's query finds its document


def test_sample_corpus_meets_its_baseline(tmp_path: Path) -> None:
    """The CI gate: a retrieval regression on the README's sample corpus fails the build."""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"vector_store": {"path": str(tmp_path / "chroma")}}))
    ingest = run_cli("ingest", "--config", str(config), "--tenant", "demo", str(REPO / "samples" / "corpus"))
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    result = run_cli(
        "eval",
        "retrieval",
        "--config",
        str(config),
        "--tenant",
        "demo",
        "--golden",
        str(REPO / "samples" / "golden.jsonl"),
        "--baseline",
        str(REPO / "samples" / "golden-baseline.json"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Answer level, with the deterministic local model: every [n] points to an injected source.
    answers = run_cli(
        "eval",
        "answers",
        "--config",
        str(config),
        "--tenant",
        "demo",
        "--golden",
        str(REPO / "samples" / "golden.jsonl"),
    )
    assert answers.returncode == 0, answers.stdout + answers.stderr
    summary = json.loads(answers.stdout)
    assert summary["citation_validity"] == 1.0 and summary["answers_with_citations"] == 1.0
    assert summary["refusal_rate_unanswerable"] >= 0.9 and summary["answerable_citing_relevant"] >= 0.7


DEVSET = REPO / "samples" / "devset"


def test_the_devset_is_well_formed() -> None:
    """samples/devset/check.py: every answer verbatim in its document, every document unchanged."""
    checked = subprocess.run(
        [sys.executable, str(DEVSET / "check.py")], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]


def test_the_devset_meets_its_baseline(tmp_path: Path) -> None:
    """The CI gate's second golden set: real documents nobody wrote for the gateway (READMEs, man
    pages, HTML manuals, PDFs, tables, code). Its baseline records today's figures, refusal rates
    included, so a retrieval or confidence regression on real documents fails the build."""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"vector_store": {"path": str(tmp_path / "chroma")}}))
    ingest = run_cli("ingest", "--config", str(config), "--tenant", "demo", str(DEVSET / "corpus"))
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    result = run_cli(
        "eval", "retrieval", "--config", str(config), "--tenant", "demo",
        "--golden", str(DEVSET / "questions.jsonl"), "--baseline", str(DEVSET / "baseline.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
