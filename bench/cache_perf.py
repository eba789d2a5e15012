"""Latency of cache hits: through the stage in-process, and end to end through a running gateway.

    python bench/cache_perf.py                       # memory + redis://127.0.0.1:6379/0, both modes
    python bench/cache_perf.py --redis ""            # memory only
    python bench/cache_perf.py --no-http             # skip the end-to-end run

- stage: `CacheStage.handle` on a JSON request, timed with perf_counter (no HTTP).
- http: a real gateway (uvicorn, the built-in demo tenant and model) with the cache stage put in
  front of its chain, and a keep-alive httpx client on loopback timing each POST until the body
  is read. The chain wiring of the cache belongs to gateway/app.py and middleware/__init__.py; until
  it lands this script makes the cache the demo tenant's only stage by replacing
  `gateway.app.build_stages` (the gateway's request log goes to stdout; results go to stderr).

Exact hits repeat one cached question. Semantic hits look up Quora duplicates
(../shared/data/gptcache-qqp/qqp_pairs.jsonl.gz: label-1 pairs whose wording passes the cache's
paraphrase check, so most are served) against their cached first questions: every lookup embeds a
new text on CPU, and only lookups that were served as semantic hits are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from gateway.cache.paraphrase import mismatch, question_shape  # noqa: E402
from gateway.cache.settings import CachePolicy  # noqa: E402
from gateway.cache.store import CacheStore, make_cache_store  # noqa: E402
from gateway.context import RequestContext  # noqa: E402
from gateway.policy import Policy  # noqa: E402
from gateway.protocols import chat  # noqa: E402
from gateway.response import GatewayResponse  # noqa: E402
from gateway.retrieval.embedder import Embedder, LocalMiniLMEmbedder  # noqa: E402
from middleware.cache import CacheStage  # noqa: E402

PAIRS = ROOT.parent / "shared" / "data" / "gptcache-qqp" / "qqp_pairs.jsonl.gz"


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def summary(name: str, ms: list[float]) -> str:
    if not ms:
        return f"{name:<34} n=0"
    return f"{name:<34} n={len(ms):<5} p50={statistics.median(ms):6.3f} ms  p90={pct(ms, 90):6.3f} ms"


def report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def ctx_for(tenant: str, question: str) -> RequestContext:
    return RequestContext.internal(
        Policy(tenant=tenant),
        {"model": "m", "messages": [{"role": "user", "content": question}]},
        "bench",
        "k",
    )


async def upstream(ctx: RequestContext) -> GatewayResponse:
    text = "an answer " * 40
    return GatewayResponse(
        raw=orjson.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 40, "total_tokens": 50},
            }
        )
    )


async def stage_bench(store: CacheStore, embedder: Embedder, pairs: list[dict[str, str]], n: int) -> None:
    stage = CacheStage(CachePolicy(enabled=True, ttl_s=600), store, embedder)
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    for pair in pairs:
        await stage.handle(ctx_for(tenant, pair["origin"]), upstream)
    await stage.drain()

    exact: list[float] = []
    for _ in range(n):
        ctx = ctx_for(tenant, pairs[0]["origin"])
        started = time.perf_counter()
        response = await stage.handle(ctx, upstream)
        chat.encode_json(response.completion(), ctx.request)
        exact.append((time.perf_counter() - started) * 1000)
        assert ctx.response_headers["x-gateway-cache"] == "hit"
    semantic: list[float] = []
    for pair in pairs:
        ctx = ctx_for(tenant, pair["similar"])
        started = time.perf_counter()
        response = await stage.handle(ctx, upstream)
        chat.encode_json(response.completion(), ctx.request)
        elapsed = (time.perf_counter() - started) * 1000
        if ctx.response_headers.get("x-gateway-cache") == "semantic-hit":
            semantic.append(elapsed)
    await stage.drain()
    report(summary(f"stage/{store.name} exact hit", exact))
    report(summary(f"stage/{store.name} semantic hit (+embed)", semantic))


def load_pairs(n: int) -> list[dict[str, str]]:
    """The first n duplicate pairs whose wording passes the paraphrase check, as origin/similar."""
    pairs: list[dict[str, str]] = []
    with gzip.open(PAIRS, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            a, b = row["text_a"], row["text_b"]
            if row["label"] == 1 and a != b and mismatch(question_shape(a), question_shape(b)) is None:
                pairs.append({"origin": a, "similar": b})
                if len(pairs) == n:
                    break
    return pairs


def embed_only(embedder: Embedder, pairs: list[dict[str, str]]) -> None:
    ms = []
    for pair in pairs[:300]:
        started = time.perf_counter()
        embedder.embed([pair["similar"]])
        ms.append((time.perf_counter() - started) * 1000)
    report(summary("embedding one query (reference)", ms))


def http_bench(state: str, embedder: Embedder, pairs: list[dict[str, str]], n: int) -> None:
    import httpx
    import uvicorn

    import gateway.app as app_module
    from gateway.app import create_app
    from gateway.config import DEFAULT_DEMO_KEY, load_config

    store = make_cache_store(state)
    stage = CacheStage(CachePolicy(enabled=True, ttl_s=600), store, embedder)
    original: Callable[..., list[Any]] = app_module.build_stages
    # The cache alone: the demo tenant's retrieval would refuse these off-corpus questions, and
    # refusals are never served to paraphrases. A hit returns before any later stage anyway.
    app_module.build_stages = lambda policy, services: [stage]

    tmp = tempfile.mkdtemp(prefix="cache-perf-")
    config = load_config(None).model_copy(update={"base_dir": tmp})
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", loop="asyncio", http="httptools")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    headers = {"Authorization": f"Bearer {DEFAULT_DEMO_KEY}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:

            def post(question: str) -> tuple[float, httpx.Response]:
                body = {"model": "local-extractive", "messages": [{"role": "user", "content": question}]}
                started = time.perf_counter()
                response = client.post("/v1/chat/completions", json=body)
                response.read()
                return (time.perf_counter() - started) * 1000, response

            for pair in pairs:
                post(pair["origin"])
            time.sleep(0.5)  # let the background writes land
            exact, overhead = [], []
            for _ in range(n):
                ms, response = post(pairs[0]["origin"])
                assert response.headers["x-gateway-cache"] == "hit", response.headers
                exact.append(ms)
                overhead.append(float(response.headers["x-gateway-overhead-ms"]))
            semantic = []
            for pair in pairs:
                ms, response = post(pair["similar"])
                if response.headers.get("x-gateway-cache") == "semantic-hit":
                    semantic.append(ms)
        report(summary(f"http/{store.name} exact hit (client)", exact))
        report(summary(f"http/{store.name} exact hit (server overhead)", overhead))
        report(summary(f"http/{store.name} semantic hit (client)", semantic))
    finally:
        server.should_exit = True
        thread.join(10)
        app_module.build_stages = original


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="'' to skip Redis")
    parser.add_argument("--n", type=int, default=2000, help="exact-hit requests per run")
    parser.add_argument("--pairs", type=int, default=300, help="paraphrase pairs for semantic hits")
    parser.add_argument("--no-http", action="store_true")
    args = parser.parse_args()

    pairs = load_pairs(args.pairs)
    # One intra-op thread: a single short query gains nothing from two, and the event loop needs a core.
    embedder = LocalMiniLMEmbedder(intra_op_threads=1)
    embedder.embed(["warm up"])
    embed_only(embedder, pairs)
    states = ["memory"] + ([args.redis] if args.redis else [])
    for state in states:
        asyncio.run(stage_bench(make_cache_store(state), embedder, pairs, args.n))
    if not args.no_http:
        for state in states:
            http_bench(state, embedder, pairs, args.n)


if __name__ == "__main__":
    main()
