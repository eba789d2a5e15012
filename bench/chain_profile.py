"""Where the production chain spends its CPU: each stage's own time per request, and a sampling
profile of the same run with its top functions per stage (issue 18), so a regression is found in
minutes.

The chain is the one a production tenant turns on: rate limit and budget (the admission stage),
input and output guardrails with their defaults, memory state, no cache and no retrieval. It runs
in-process in front of an upstream that answers at once with a JSON completion, one request at a
time, after a warm-up. First each stage's own time (the chain's `ctx.stage_ms`, which excludes the
stages after it) is averaged. Then the run is repeated under a sampler that charges each sample to
the innermost `middleware/<stage>.py` frame on the stack (or "terminal" for the upstream stand-in,
"chain" for the plumbing between stages), counting the leaf function as where the time went.
Samples are taken on CPU time (ITIMER_PROF; the kernel's tick, ~4 ms, bounds the rate) by a signal
handler on the event loop's thread: a C call's time goes to the line that made it, and no thread
competes for the GIL.

    .venv/bin/python bench/chain_profile.py [--requests 8000] [--top 8] [--prompt-words 120]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from types import FrameType

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.chain import Handler, compose
from gateway.config import DeploymentConfig, GatewayConfig, ModelConfig
from gateway.context import RequestContext
from gateway.policy import Policy
from gateway.response import GatewayResponse
from gateway.services import build_services
from middleware import build_stages

ROOT = Path(__file__).resolve().parents[1]
ANSWER = (
    b'{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":'
    b'{"role":"assistant","content":"Replace the seals every 4,000 hours of continuous running, '
    b'and check them at each service [1]."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":160,"completion_tokens":20,"total_tokens":180}}'
)
PRODUCTION = {
    "rate_limit": {"enabled": True, "rpm": 1_000_000_000, "tpm": 1_000_000_000_000, "per_key_rpm": 10**9},
    "budget": {"enabled": True, "daily_usd": 1_000_000, "per_key_daily_usd": 1_000_000},
    "input_guardrails": {"enabled": True},
    "output_guardrails": {"enabled": True},
}


async def terminal(ctx: RequestContext) -> GatewayResponse:
    ctx.served_model = ctx.model  # as the router records an answer
    return GatewayResponse(raw=ANSWER)


def make_ctx(policy: Policy, prompt: str) -> RequestContext:
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "You are a support assistant. Answer from the manual only."},
            {"role": "user", "content": prompt},
        ],
    }
    return RequestContext.internal(policy, body, uuid.uuid4().hex, "benchkey0001")


async def run(chain: Handler, policy: Policy, prompt: str, n: int) -> dict[str, float]:
    """Each stage's own time per request, in ms, over n requests one at a time."""
    totals: dict[str, float] = defaultdict(float)
    for _ in range(n):
        ctx = make_ctx(policy, prompt)
        started = time.perf_counter()
        await chain(ctx)
        totals["(whole chain)"] += (time.perf_counter() - started) * 1000
        for stage, ms in ctx.stage_ms.items():
            totals[stage] += ms
    return {name: total / n for name, total in totals.items()}


class Sampler:
    """A CPU-time sampling profiler (ITIMER_PROF): each tick's signal handler runs on the main
    thread, where the event loop runs, and charges the frame it interrupted. Time inside a C call
    (tiktoken, regex, orjson) goes to the Python line that made the call."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.by_stage: Counter[str] = Counter()
        self.leaves: dict[str, Counter[str]] = defaultdict(Counter)

    def __enter__(self) -> Sampler:
        signal.signal(signal.SIGPROF, self._tick)
        signal.setitimer(signal.ITIMER_PROF, self.interval_s, self.interval_s)
        return self

    def __exit__(self, *_: object) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_DFL)

    def _tick(self, _signum: int, leaf: FrameType | None) -> None:
        if leaf is None:
            return
        stage, frame = None, leaf
        while frame is not None:
            path = frame.f_code.co_filename
            if "/middleware/" in path and path.endswith(".py"):
                stage = Path(path).stem
                break
            if frame.f_code.co_name == "terminal" and path == __file__:
                stage = "terminal"
                break
            frame = frame.f_back
        if stage is None:
            stage = "chain" if _in_gateway(leaf) else "bench driver / event loop"
        code = leaf.f_code
        where = f"{code.co_name} ({_short(code.co_filename)}:{leaf.f_lineno})"
        self.by_stage[stage] += 1
        self.leaves[stage][where] += 1


def _in_gateway(frame: FrameType | None) -> bool:
    while frame is not None:
        if "/gateway/" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _short(path: str) -> str:
    for marker in ("/site-packages/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/", 2)[-1] if "/" in path else path


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--top", type=int, default=8, help="functions shown per stage")
    parser.add_argument("--prompt-words", type=int, default=120)
    parser.add_argument("--interval-ms", type=float, default=0.5)
    args = parser.parse_args()
    deployment = DeploymentConfig(
        provider="openai_compatible", model="gpt-4o-mini", api_base="http://127.0.0.1:9/v1"
    )
    config = GatewayConfig(
        models=[ModelConfig(name="gpt-4o-mini", deployments=[deployment])], retrieval={"enabled": False}
    )
    services = await asyncio.to_thread(build_services, config)
    policy = Policy(tenant="bench", models=["gpt-4o-mini"], **PRODUCTION)
    chain = compose(build_stages(policy, services), terminal)
    words = ("the pump seal replacement interval when running continuously at sixty degrees is " * 20).split()
    prompt = " ".join(words[: args.prompt_words]) + "?"
    await run(chain, policy, prompt, 300)  # warm-up: tokenizers, caches, classifier
    own = await run(chain, policy, prompt, args.requests)
    print(f"production chain, {args.requests} requests one at a time, prompt {args.prompt_words} words")
    print("own time per request (ms), excluding the stages after each:")
    for name, ms in sorted(own.items(), key=lambda item: -item[1]):
        print(f"  {name:<22} {ms:8.3f}")
    started_cpu = time.process_time()
    with Sampler(args.interval_ms / 1000) as sampler:
        await run(chain, policy, prompt, args.requests)
    cpu_ms = (time.process_time() - started_cpu) * 1000 / args.requests
    total = sum(sampler.by_stage.values()) or 1
    print(f"\nsampled profile: {total} samples, {cpu_ms:.3f} ms CPU per request under the sampler")
    for stage, count in sampler.by_stage.most_common():
        print(f"  {stage:<22} {100 * count / total:5.1f}%")
        for where, hits in sampler.leaves[stage].most_common(args.top):
            print(f"      {100 * hits / total:5.1f}%  {where}")
    await services.close()


if __name__ == "__main__":
    asyncio.run(main())
