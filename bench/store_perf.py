"""Vector store search at 100k chunks, MCP `search` against the same REST search, and attach
throughput against the raw embedder, through a real gateway process (issue 17's targets).

    python bench/store_perf.py                          # 100k chunks, 200 queries; prints JSON
    python bench/store_perf.py --chunks 5000 --queries 40 --attach-files 40 --json-out FILE   # quick

1. A store of the tenant is written offline into the gateway's data directory: `--store-files`
   files registered in the store (completed, with a stored file each, as an upload leaves them)
   holding `--chunks` synthetic ~230-token chunks (bench/retrieval_perf.py's text generator). The
   first `--real` chunks are embedded for real; the rest get random unit vectors (embedding 100k
   chunks on this CPU would take hours). Queries always run the real embedder.
2. `rag-gateway serve` on that directory. REST: `POST /v1/vector_stores/{id}/search` (top 10)
   over one keep-alive connection, sequentially; MCP: the `mcp` client's `call_tool("search")` on
   one initialised session against the same store and queries. The two alternate query by query,
   so drift hits both alike. Latency is measured at the client: HTTP, JSON, auth, the rate-limit
   admit, query embedding, hybrid search, confidence and filtering included.
3. Attach: `--attach-files` generated Markdown files uploaded, then one file batch timed from its
   create to `completed` (parse, chunk, embed, write, BM25 rebuild in the background), in chunks/s;
   against `embed` alone on the same chunk texts in this process, batches of 32, after the gateway
   has stopped (so the two never share the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import Server  # noqa: E402
from bench.retrieval_perf import TextGen, pct, random_unit, write_markdown_corpus  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.files import FileStore  # noqa: E402
from gateway.policy import hash_key  # noqa: E402
from gateway.retrieval.index import IndexStore, make_chroma_client  # noqa: E402
from gateway.retrieval.types import Chunk  # noqa: E402
from gateway.services import load_embedder  # noqa: E402
from gateway.vector_stores import VectorStoreRegistry, index_key  # noqa: E402

KEY = "sk-bench-stores"
TENANT = "acme"


def log(message: str) -> None:
    print(f"[store_perf] {message}", file=sys.stderr, flush=True)


def write_config(root: Path, port: int) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    # A rate limit, as a production tenant has one: its admit is part of every search.
    (root / "policies" / "acme.yaml").write_text(
        f'tenant: {TENANT}\napi_keys: ["{hash_key(KEY)}"]\nmodels: ["*"]\n'
        "rate_limit: {enabled: true, rpm: 1000000}\n"
    )
    config = root / "gateway.yaml"
    config.write_text(
        f"""# written by bench/store_perf.py
server: {{host: 127.0.0.1, port: {port}}}
policies_dir: policies
models:
  - name: bench
    deployments: [{{provider: openai_compatible, model: m, api_base: "http://127.0.0.1:9/v1"}}]
state: memory
retrieval: {{enabled: true}}
vector_store: {{path: data/chroma}}
files: {{dir: data/files}}
"""
    )
    return config


def build_store(config_path: Path, chunks: int, files: int, real: int) -> tuple[str, float]:
    """The store's registry record, stored files and index, written as the gateway would."""
    config = load_config(config_path)
    embedder = load_embedder(config.retrieval.embedding_model, config)
    files_dir = config.resolve(config.files.dir)
    registry, file_store = VectorStoreRegistry(files_dir), FileStore(files_dir)
    store_id = registry.create(TENANT, "bench", {}, None, None)["id"]
    file_ids = []
    for f in range(files):
        stored = file_store.save(TENANT, f"handbook-{f:05d}.md", "assistants", io.BytesIO(b"# h\n"), None)
        file_ids.append(stored.id)
    now = int(time.time())
    for i, file_id in enumerate(file_ids):
        registry.update_file(
            TENANT, store_id, file_id, status="completed", created_at=now, attributes={"shard": i % 10},
            chunking=None, usage_bytes=4, last_error=None,
        )  # fmt: skip
    client = make_chroma_client(str(config.resolve(config.vector_store.path)))
    index = IndexStore(client, embedder.model_id).tenant(index_key(TENANT, store_id))
    gen, rng = TextGen(seed=5), np.random.default_rng(3)
    per_file = max(1, chunks // files)
    started = time.perf_counter()
    batch: list[tuple[str, list[Chunk], np.ndarray]] = []
    for f, file_id in enumerate(file_ids):
        first = f * per_file
        doc = [
            Chunk(
                id=f"{file_id}#{o}",
                doc_id=file_id,
                text=gen.passage(),
                source=f"handbook-{f:05d}.md",
                title=f"Handbook {f}",
                section=f"Topic {o}",
                content_hash=f"h{f}",
                ordinal=o,
            )
            for o in range(per_file)
        ]
        if first < real:
            vectors = embedder.embed([c.text for c in doc])
        else:
            vectors = random_unit(len(doc), embedder.dim, rng)
        batch.append((file_id, doc, vectors))
        if len(batch) * per_file >= 2000:
            index.apply(upserts=batch)
            batch = []
    if batch:
        index.apply(upserts=batch)
    log(f"store {store_id}: {len(index)} chunks written in {time.perf_counter() - started:.0f} s")
    return store_id, time.perf_counter() - started


def serve(config_path: Path, port: int) -> Server:
    """`rag-gateway serve` on the built data directory, unpinned (both cores), until /healthz."""
    server = Server(
        "rag-gateway-stores",
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--port", str(port)],
        port,
        config_path.parent,
        None,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "ANONYMIZED_TELEMETRY": "False"},
        ready_path="/healthz",
        cwd=config_path.parent,
    )
    server.start()
    server.wait_ready(180)
    return server


async def search_latency(base: str, store_id: str, queries: list[str], warmup: int) -> dict[str, Any]:
    import httpx2  # what the mcp client is built on
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {KEY}"}
    rest_ms: list[float] = []
    mcp_ms: list[float] = []
    sizes: list[int] = []
    async with (
        httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as rest,
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(f"{base}/mcp/", http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for i, query in enumerate(queries):
            t0 = time.perf_counter()
            answer = await rest.post(
                f"/v1/vector_stores/{store_id}/search", json={"query": query, "max_num_results": 10}
            )
            t1 = time.perf_counter()
            result = await session.call_tool(
                "search", {"query": query, "max_results": 10, "vector_store_ids": [store_id]}
            )
            t2 = time.perf_counter()
            assert answer.status_code == 200, answer.text
            assert not result.is_error, result.content
            if i >= warmup:
                rest_ms.append((t1 - t0) * 1000)
                mcp_ms.append((t2 - t1) * 1000)
                sizes.append(len(answer.json()["data"]))
    return {
        "queries": len(rest_ms),
        "results_per_query_median": statistics.median(sizes),
        "rest_p50_ms": round(statistics.median(rest_ms), 2),
        "rest_p95_ms": round(pct(rest_ms, 95), 2),
        "mcp_p50_ms": round(statistics.median(mcp_ms), 2),
        "mcp_p95_ms": round(pct(mcp_ms, 95), 2),
        "mcp_minus_rest_p50_ms": round(statistics.median(mcp_ms) - statistics.median(rest_ms), 2),
        "mcp_minus_rest_median_of_pairs_ms": round(
            statistics.median(m - r for m, r in zip(mcp_ms, rest_ms, strict=True)), 2
        ),
    }


def attach_throughput(base: str, folder: Path) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
        ids = []
        for path in sorted(folder.glob("*.md")):
            answer = http.post(
                "/v1/files", files={"file": (path.name, path.read_bytes())}, data={"purpose": "assistants"}
            )
            answer.raise_for_status()
            ids.append(answer.json()["id"])
        store = http.post("/v1/vector_stores", json={"name": "attach"}).json()["id"]
        started = time.perf_counter()
        batch = http.post(f"/v1/vector_stores/{store}/file_batches", json={"file_ids": ids}).json()
        while True:
            state = http.get(f"/v1/vector_stores/{store}/file_batches/{batch['id']}").json()
            if state["status"] != "in_progress":
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    return {"files": len(ids), "status": state["status"], "counts": state["file_counts"], "seconds": elapsed}


def raw_embed(config_path: Path, folder: Path) -> tuple[int, float]:
    """The same files chunked as ingestion chunks them, then `embed` alone on those texts."""
    from gateway.retrieval.ingest import Ingestor

    config = load_config(config_path)
    embedder = load_embedder(config.retrieval.embedding_model, config)
    with tempfile.TemporaryDirectory(prefix="store-perf-raw-") as tmp:
        index = IndexStore(make_chroma_client(tmp), embedder.model_id).tenant("raw")
        Ingestor(index, embedder).ingest_paths("raw", [folder])
        texts = [c.text for chunks in index.documents().values() for c in chunks]
    embedder.embed(texts[:8])  # warm-up outside the timing
    started = time.perf_counter()
    for i in range(0, len(texts), 32):
        embedder.embed(texts[i : i + 32])
    return len(texts), time.perf_counter() - started


def row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    store, search, attach = result["store"], result["search"], result["attach"]
    lines = [
        "# Vector stores and MCP (bench/store_perf.py)",
        "",
        "Written by `python bench/store_perf.py`; a real `rag-gateway serve` process (unpinned, both",
        "cores), one client at a time. Targets (issue 17): search p50 <= 20 ms at 100k chunks with the",
        "query embedding, MCP `search` <= 2 ms over the same REST search, attach >= 0.8x the raw embedder.",
        "",
        row("store", "chunks", "files", "embedded for real", "build s"),
        row("---", "---:", "---:", "---:", "---:"),
        row(
            "searched", f"{store['chunks']:,}", f"{store['files']:,}", f"{store['real']:,}", store["build_s"]
        ),
        "",
        row(f"search (top 10, {search['queries']} queries)", "p50 ms", "p95 ms"),
        row("---", "---:", "---:"),
        row("`POST /v1/vector_stores/{id}/search`", search["rest_p50_ms"], search["rest_p95_ms"]),
        row("MCP `search` (same store, same queries)", search["mcp_p50_ms"], search["mcp_p95_ms"]),
        row(
            "MCP minus REST",
            search["mcp_minus_rest_p50_ms"],
            f"(median of pairs {search['mcp_minus_rest_median_of_pairs_ms']})",
        ),
        "",
        row("attach", "files", "chunks", "seconds", "chunks/s"),
        row("---", "---:", "---:", "---:", "---:"),
        row(
            "one file batch, create to `completed`",
            attach["files"],
            attach["chunks"],
            attach["seconds"],
            attach["attach_chunks_per_s"],
        ),
        row(
            "`embed` alone on the same chunk texts, batches of 32",
            "",
            attach["chunks"],
            attach["raw_embed_s"],
            attach["raw_chunks_per_s"],
        ),
        row("attach / raw", "", "", "", attach["attach_vs_raw"]),
        "",
        "Latency is the client's: HTTP, JSON, auth, the tenant's rate-limit admit, MiniLM query",
        "embedding, hybrid dense + BM25 search, confidence and the file filter. Most of the store's",
        "chunks have random unit vectors (embedding 100k chunks on this CPU would take hours); the",
        "queries always run the real embedder.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=100_000, help="chunks in the searched store")
    p.add_argument("--store-files", type=int, default=1000, help="files the store's chunks belong to")
    p.add_argument("--real", type=int, default=2000, help="of the chunks, how many are embedded for real")
    p.add_argument("--queries", type=int, default=200, help="timed queries (after 10 warm-up ones)")
    p.add_argument("--attach-files", type=int, default=120, help="Markdown files for the attach run")
    p.add_argument("--port", type=int, default=18431)
    p.add_argument("--json-out", help="write the result here as well as to stdout")
    p.add_argument("--markdown-out", default=str(ROOT / "bench" / "STORES_RESULTS.md"))
    p.add_argument("--render", help="only write the markdown of an earlier run's JSON")
    args = p.parse_args(argv)
    if args.render:
        Path(args.markdown_out).write_text(markdown(json.loads(Path(args.render).read_text())))
        return 0
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="store-perf-") as tmp:
        root = Path(tmp)
        config_path = write_config(root, args.port)
        store_id, build_s = build_store(config_path, args.chunks, args.store_files, args.real)
        result["store"] = {
            "chunks": args.chunks,
            "files": args.store_files,
            "real": args.real,
            "build_s": round(build_s),
        }
        corpus = root / "attach"
        write_markdown_corpus(corpus, args.attach_files, 1, TextGen(seed=29))
        server = serve(config_path, args.port)
        base = f"http://127.0.0.1:{args.port}"
        try:
            gen = TextGen(seed=17)
            queries = [gen.question() for _ in range(args.queries + 10)]
            result["search"] = asyncio.run(search_latency(base, store_id, queries, warmup=10))
            log(f"search {json.dumps(result['search'])}")
            attach = attach_throughput(base, corpus)
        finally:
            server.stop(30)
        chunks, raw_s = raw_embed(config_path, corpus)
        attach_rate = chunks / attach["seconds"] if attach["seconds"] else 0.0
        raw_rate = chunks / raw_s if raw_s else 0.0
        result["attach"] = {
            **attach,
            "seconds": round(attach["seconds"], 2),
            "chunks": chunks,
            "attach_chunks_per_s": round(attach_rate, 2),
            "raw_embed_s": round(raw_s, 2),
            "raw_chunks_per_s": round(raw_rate, 2),
            "attach_vs_raw": round(attach_rate / raw_rate, 3) if raw_rate else None,
        }
        log(f"attach {json.dumps(result['attach'])}")
    text = json.dumps(result, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    Path(args.markdown_out).write_text(markdown(result))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
