"""Memory of the serving process in the two cases a user meets first (issue targets in brackets):

1. `rag-gateway serve` with no config in a fresh copy of `policies/` (the README's `make run`): the
   demo tenant's seed corpus (samples/corpus) is ingested in the background; RSS is read once
   /readyz says it is done, then again after a few retrieval requests [<= 400 MB].
2. A gateway with retrieval off, idle after start-up, for a tenant with no limits [< 150 MB], and
   one with issue 18's production chain: a rate limit, a budget, input and output guardrails
   [<= 100 MB].

    .venv/bin/python bench/memory.py

RSS is summed over the process tree (shared pages count twice, which only overstates).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import children, free_port, rss_mb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.policy import hash_key
from gateway.retrieval.formats.ocr import IDLE_EXIT_S

ROOT = Path(__file__).resolve().parents[1]
DEMO_KEY = "sk-demo-rag-gateway"


def _get(url: str, key: str | None = None, body: dict | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"} if key else {}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _serve(cwd: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("RAG_GATEWAY_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


def _wait(proc: subprocess.Popen[bytes], url: str, timeout_s: float = 300) -> float:
    started = time.monotonic()
    while _get(url) != 200:
        if proc.poll() is not None or time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{url} never answered 200")
        time.sleep(0.2)
    return time.monotonic() - started


def after_sample_ingest(work: Path) -> dict[str, float]:
    shutil.copytree(ROOT / "policies", work / "policies")
    proc, url = _serve(work)
    try:
        ready_s = _wait(proc, f"{url}/readyz")
        time.sleep(1.0)
        figures = {
            "ready_s": ready_s,
            "rss_after_ingest_mb": rss_mb(proc.pid, tree=False),
            "rss_with_ocr_process_mb": rss_mb(
                proc.pid
            ),  # the OCR child lives IDLE_EXIT_S after its last page
        }
        for question in ("How do I request a refund?", "Which plans include SCIM?", "What is the SLA?") * 5:
            body = {"model": "local-extractive", "messages": [{"role": "user", "content": question}]}
            _get(f"{url}/v1/chat/completions", DEMO_KEY, body)
        figures["rss_after_requests_mb"] = rss_mb(proc.pid, tree=False)
        deadline = time.monotonic() + IDLE_EXIT_S + 10
        while children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        figures["rss_tree_after_ocr_exit_mb"] = rss_mb(proc.pid)
        return figures
    finally:
        proc.terminate()
        proc.wait(30)


def idle_without_retrieval(work: Path, limits: bool) -> dict[str, float]:
    """`limits`: the tenant has the production chain (rate limit, budget, input and output guardrails)."""
    policies = work / "policies"
    policies.mkdir()
    policy = f"tenant: proxy\napi_keys: ['{hash_key('sk-proxy-bench')}']\nmodels: [local-extractive]\n"
    if limits:
        policy += (
            "rate_limit: {enabled: true, rpm: 100000}\nbudget: {enabled: true, daily_usd: 100}\n"
            "input_guardrails: {enabled: true}\noutput_guardrails: {enabled: true}\n"
        )
    (policies / "proxy.yaml").write_text(policy)
    config = work / "gateway.yaml"
    config.write_text("policies_dir: policies\nretrieval: {enabled: false}\n")
    proc, url = _serve(work, "--config", str(config))
    try:
        healthy_s = _wait(proc, f"{url}/healthz")
        time.sleep(1.0)
        suffix = "_with_limits" if limits else ""
        return {f"healthz{suffix}_s": healthy_s, f"rss_idle_no_retrieval{suffix}_mb": rss_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    figures: dict[str, float] = {}
    for measure in (after_sample_ingest, partial(idle_without_retrieval, limits=False)):
        with tempfile.TemporaryDirectory() as work:
            figures.update(measure(Path(work)))
    with tempfile.TemporaryDirectory() as work:
        figures.update(idle_without_retrieval(Path(work), limits=True))  # reported; issue 18's target
    print(json.dumps({k: round(v, 1) for k, v in figures.items()}, indent=2))
    ok = figures["rss_tree_after_ocr_exit_mb"] <= 400 and figures["rss_idle_no_retrieval_mb"] < 150
    print(
        "targets: after sample ingest <= 400 MB, idle without retrieval < 150 MB:", "met" if ok else "NOT met"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
