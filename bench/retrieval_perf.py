"""Retrieval stage latency at 1k / 10k / 100k chunks, process RSS, and ingestion throughput.

    python bench/retrieval_perf.py                      # sizes 1k, 10k, 100k; prints JSON
    python bench/retrieval_perf.py --sizes 1000 --queries 50 --files 60 --json-out FILE   # quick

- latency: `RetrievalService.search_sync` (query embedding with the real MiniLM embedder, Chroma
  dense search, BM25, fusion and the confidence features) over one tenant index, timed with
  perf_counter; p50/p95 per size. The index grows in place (1k, then +9k, then +90k), and the RSS
  of this process (VmRSS) is read after each size's queries. Chunks are synthetic ~230-token
  passages (Zipf-distributed words from a generated vocabulary plus English function words, so BM25
  sees a realistic term distribution). The index starts as the ingestion run's index (its chunks
  embedded for real); the chunks added to reach each size get random unit vectors, because
  embedding 100k chunks on this CPU would take hours. The query path always runs the real embedder.
- ingestion (first): 300 generated Markdown files (one ~230-token section each) through
  `Ingestor.ingest_paths` into a fresh Chroma index (parse, chunk, embed, write, BM25 rebuild),
  in chunks/s, against the embedder's raw throughput (`embed` on the same chunk texts, batches of 32).

Used by bench/run.py (retrieval phase); it runs as its own process so RSS is this work's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.retrieval.embedder import make_embedder  # noqa: E402
from gateway.retrieval.index import IndexStore, make_chroma_client  # noqa: E402
from gateway.retrieval.ingest import Ingestor  # noqa: E402
from gateway.retrieval.service import RetrievalService  # noqa: E402
from gateway.retrieval.types import Chunk  # noqa: E402

FUNCTION_WORDS = (
    "the of and to in is for on that with as by at from this be are or an it which was can when "
    "if not all must should each after before under over between during per into than then"
).split()
SYLLABLES = (
    "ka lo mi ren tor vel sa pri dun gal hem ist ber cho fa lin mor nex pul quo ras tem ur vod".split()
)
WORDS_PER_CHUNK = 75  # ~230 MiniLM word pieces: the synthetic words split into ~3 pieces each


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class TextGen:
    """Deterministic varied prose: Zipf-weighted content words, function words, sentences."""

    def __init__(self, seed: int = 7, vocab: int = 20_000) -> None:
        self.rng = random.Random(seed)
        words = set()
        while len(words) < vocab:
            words.add("".join(self.rng.choice(SYLLABLES) for _ in range(self.rng.randint(2, 4))))
        self.vocab = sorted(words)
        self.rng.shuffle(self.vocab)
        weights = 1.0 / np.arange(1, vocab + 1) ** 1.05
        self.cum = np.cumsum(weights / weights.sum())
        self.np_rng = np.random.default_rng(seed)

    def words(self, n: int) -> list[str]:
        idx = np.searchsorted(self.cum, self.np_rng.random(n))
        out = []
        for i, j in enumerate(idx):
            out.append(
                FUNCTION_WORDS[j % len(FUNCTION_WORDS)]
                if i % 3 == 1
                else self.vocab[min(j, len(self.vocab) - 1)]
            )
        return out

    def passage(self, n_words: int = WORDS_PER_CHUNK) -> str:
        words = self.words(n_words)
        sentences, i = [], 0
        while i < len(words):
            k = self.rng.randint(9, 18)
            s = " ".join(words[i : i + k])
            sentences.append(s[:1].upper() + s[1:] + ".")
            i += k
        return " ".join(sentences)

    def question(self) -> str:
        return "What does " + " ".join(self.words(7)) + " mean?"


def synthetic_chunks(
    gen: TextGen, start: int, count: int, per_doc: int = 10
) -> list[tuple[str, list[Chunk]]]:
    docs: dict[str, list[Chunk]] = {}
    for i in range(start, start + count):
        doc_id = f"doc-{i // per_doc:06d}.md"
        chunks = docs.setdefault(doc_id, [])
        chunks.append(
            Chunk(
                id=f"{doc_id}#{i % per_doc}",
                doc_id=doc_id,
                text=gen.passage(),
                source=doc_id,
                title=f"Document {i // per_doc}",
                section=f"Section {i % per_doc}",
                content_hash=f"h{i // per_doc}",
                ordinal=i % per_doc,
            )
        )
    return list(docs.items())


def random_unit(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))]


def latency_by_size(
    sizes: list[int], queries: int, embedder: Any, store: IndexStore, tenant: str
) -> list[dict]:
    gen = TextGen()
    rng = np.random.default_rng(11)
    service = RetrievalService(store, embedder, threads=1)
    index = store.tenant(tenant)
    real = len(index)
    qs = [gen.question() for _ in range(queries + 10)]
    out, have = [], real
    try:
        for size in sorted(sizes):
            started = time.perf_counter()
            if size > have:
                upserts = [
                    (doc_id, chunks, random_unit(len(chunks), embedder.dim, rng))
                    for doc_id, chunks in synthetic_chunks(gen, have, size - have)
                ]
                index.apply(upserts=upserts)
            build_s = time.perf_counter() - started
            have = max(have, size)
            for q in qs[:10]:  # warm the caches of this size
                service.search_sync(tenant, q, 5, 100, None)
            total, embed_only, hits = [], [], 0
            for q in qs[10:]:
                t0 = time.perf_counter()
                embedder.embed([q])
                t1 = time.perf_counter()
                result = service.search_sync(tenant, q, 5, 100, None)
                t2 = time.perf_counter()
                embed_only.append((t1 - t0) * 1000)
                total.append((t2 - t1) * 1000)
                hits += bool(result.hits)
            row = {
                "chunks": len(index),
                "real_embeddings": real,
                "build_s": round(build_s, 1),
                "queries": len(total),
                "queries_with_hits": hits,
                "p50_ms": statistics.median(total),
                "p95_ms": pct(total, 95),
                "embed_p50_ms": statistics.median(embed_only),
                "rss_mb": rss_mb(),
            }
            out.append(row)
            print(f"[retrieval_perf] {json.dumps(row)}", file=sys.stderr, flush=True)
    finally:
        service.close()
    return out


def write_markdown_corpus(folder: Path, files: int, sections: int, gen: TextGen) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        parts = [f"# Handbook {f}\n"]
        for s in range(sections):
            parts.append(f"## Topic {f}.{s}\n\n{gen.passage(WORDS_PER_CHUNK - 4)}\n")
        (folder / f"handbook-{f:04d}.md").write_text("\n".join(parts))


def ingestion(files: int, sections: int, embedder: Any, tmp: Path) -> tuple[dict[str, Any], IndexStore]:
    gen = TextGen(seed=23)
    folder = tmp / "corpus"
    write_markdown_corpus(folder, files, sections, gen)
    store = IndexStore(make_chroma_client(str(tmp / "chroma-ingest")), embedder.model_id)
    index = store.tenant("ingest")
    embedder.embed([gen.passage() for _ in range(8)])  # warm-up outside the timings
    started = time.perf_counter()
    report = Ingestor(index, embedder).ingest_paths("ingest", [folder])
    pipeline_s = time.perf_counter() - started
    texts = [c.text for chunks in index.documents().values() for c in chunks]
    started = time.perf_counter()
    for i in range(0, len(texts), 32):
        embedder.embed(texts[i : i + 32])
    raw_s = time.perf_counter() - started
    tokens = (
        [len(embedder._tokenizer.encode(t).ids) for t in texts[:200]]
        if hasattr(embedder, "_tokenizer")
        else []
    )
    pipeline = report.chunks_embedded / pipeline_s if pipeline_s else 0.0
    raw = len(texts) / raw_s if raw_s else 0.0
    return {
        "files": files,
        "sections_per_file": sections,
        "chunks": report.chunks_embedded,
        "errors": report.counts().get("error", 0),
        "median_chunk_tokens": statistics.median(tokens) if tokens else None,
        "pipeline_s": round(pipeline_s, 2),
        "pipeline_chunks_per_s": pipeline,
        "raw_embed_s": round(raw_s, 2),
        "raw_chunks_per_s": raw,
        "pipeline_vs_raw": pipeline / raw if raw else None,
        "rss_after_mb": rss_mb(),
    }, store


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000", help="index sizes in chunks, comma separated")
    p.add_argument("--queries", type=int, default=200, help="timed queries per size")
    p.add_argument("--files", type=int, default=300, help="Markdown files for the ingestion run")
    p.add_argument("--sections", type=int, default=1, help="~230-token sections per file")
    p.add_argument("--json-out", help="write the result here as well as to stdout")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    result: dict[str, Any] = {"rss_start_mb": rss_mb()}
    t0 = time.perf_counter()
    embedder = make_embedder("minilm")
    result["embedder_load_s"] = round(time.perf_counter() - t0, 2)
    result["rss_after_embedder_mb"] = rss_mb()
    with tempfile.TemporaryDirectory(prefix="retrieval-perf-") as tmp:
        result["ingestion"], store = ingestion(args.files, args.sections, embedder, Path(tmp))
        print(f"[retrieval_perf] ingestion {json.dumps(result['ingestion'])}", file=sys.stderr, flush=True)
        result["latency"] = latency_by_size(sizes, args.queries, embedder, store, "ingest")
    text = json.dumps(result, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
