"""Importers that turn public evaluation sets into a tenant corpus plus a golden file.

Unanswerable questions are made honestly: the relevant documents of a held-out set of queries
are left out of the corpus, so the same question style appears on both sides of the split.
"""

from __future__ import annotations

import csv
import gzip
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.evaluation.golden import GoldenQuery
from gateway.retrieval.ingest import Ingestor, IngestReport


class DatasetError(ValueError):
    """A dataset folder or file that is not in the expected format."""


@dataclass(slots=True)
class ImportResult:
    report: IngestReport
    queries: list[GoldenQuery]
    documents_ingested: int
    documents_held_out: int


def _open_text(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
        yield from handle


def _markdown(title: str, text: str) -> bytes:
    title = " ".join(title.split())
    return (f"# {title}\n\n{text.strip()}\n" if title else f"{text.strip()}\n").encode("utf-8")


def read_beir(
    directory: Path, split: str
) -> tuple[dict[str, tuple[str, str]], dict[str, str], dict[str, set[str]]]:
    corpus_path = next(
        (directory / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (directory / n).exists()), None
    )
    qrels_path = directory / "qrels" / f"{split}.tsv"
    if corpus_path is None or not (directory / "queries.jsonl").exists() or not qrels_path.exists():
        raise DatasetError(
            f"{directory}: a BEIR folder needs corpus.jsonl (or .gz), queries.jsonl and qrels/{split}.tsv"
        )
    corpus: dict[str, tuple[str, str]] = {}
    for line in _open_text(corpus_path):
        if line.strip():
            row = orjson.loads(line)
            corpus[str(row["_id"])] = (row.get("title") or "", row.get("text") or "")
    queries = {}
    for line in _open_text(directory / "queries.jsonl"):
        if line.strip():
            row = orjson.loads(line)
            queries[str(row["_id"])] = row["text"]
    qrels: dict[str, set[str]] = defaultdict(set)
    with open(qrels_path, encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t"):
            if len(row) < 3 or row[0] == "query-id":
                continue
            if float(row[2]) > 0:
                qrels[row[0]].add(row[1])
    return corpus, queries, dict(qrels)


def hold_out(qrels: dict[str, set[str]], fraction: float, seed: int) -> set[str]:
    """Queries whose relevant documents no other query needs: removing them hurts nobody else."""
    owners: dict[str, int] = defaultdict(int)
    for docs in qrels.values():
        for doc in docs:
            owners[doc] += 1
    eligible = sorted(q for q, docs in qrels.items() if all(owners[d] == 1 for d in docs))
    count = min(len(eligible), round(len(qrels) * fraction))
    return set(random.Random(seed).sample(eligible, count))


def import_beir(
    directory: Path,
    ingestor: Ingestor,
    tenant: str,
    split: str = "test",
    unanswerable_fraction: float = 0.2,
    seed: int = 13,
) -> ImportResult:
    corpus, queries, qrels = read_beir(directory, split)
    qrels = {q: docs for q, docs in qrels.items() if q in queries}
    held = hold_out(qrels, unanswerable_fraction, seed)
    removed = {d for q in held for d in qrels[q]}
    items = (
        (f"{doc_id}.md", _markdown(title, text), doc_id)
        for doc_id, (title, text) in corpus.items()
        if doc_id not in removed
    )
    report = ingestor.ingest_many(tenant, items, sync=True)
    golden = [
        GoldenQuery(q, queries[q], [] if q in held else sorted(qrels[q]), q not in held)
        for q in sorted(qrels, key=_natural)
    ]
    return ImportResult(report, golden, len(corpus) - len(removed), len(removed))


def import_pubmedqa(
    path: Path, ingestor: Ingestor, tenant: str, answerable_fraction: float = 0.5, seed: int = 13
) -> ImportResult:
    """PubMedQA's labelled set: each question's contexts are its gold document (id = PubMed id)."""
    try:
        data = orjson.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
    except (OSError, orjson.JSONDecodeError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: not a PubMedQA ori_pqal.json(.gz) file: {exc}") from exc
    ids = sorted(data, key=_natural)
    kept = set(random.Random(seed).sample(ids, round(len(ids) * answerable_fraction)))
    items = (
        (f"{pmid}.md", _markdown(f"PubMed {pmid}", "\n\n".join(data[pmid]["CONTEXTS"])), pmid)
        for pmid in ids
        if pmid in kept
    )
    report = ingestor.ingest_many(tenant, items, sync=True)
    golden = [
        GoldenQuery(pmid, data[pmid]["QUESTION"], [pmid] if pmid in kept else [], pmid in kept)
        for pmid in ids
    ]
    return ImportResult(report, golden, len(kept), len(ids) - len(kept))


def _natural(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (1 << 62, key)
