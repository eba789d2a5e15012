"""README's own path, as a newcomer runs it: `rag-gateway serve` with no config in a checkout, the
demo tenant answering with citations, then `keys create`, the printed line in a new policy file,
`rag-gateway ingest`, and the new tenant's key working within 2 s of the policy edit."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "gateway"]


def ask(url: str, key: str, question: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "local-extractive", "messages": [{"role": "user", "content": question}]},
        timeout=30,
    )


def test_readme_path_from_make_run_to_a_new_tenant_with_its_own_documents(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("RAG_GATEWAY_CONFIG", None)
    port = free_port()
    server = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway never became ready"
            time.sleep(0.2)

        # The demo tenant (policies/demo.yaml) has retrieval on over the sample corpus.
        demo = ask(url, "sk-demo-rag-gateway", "How do I request a refund?")
        assert demo.status_code == 200, demo.text
        assert demo.json()["citations"], "the demo tenant must answer from its corpus with citations"

        created = subprocess.run(
            [*CLI, "keys", "create", "--tenant", "mydocs"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert created.returncode == 0, created.stderr
        key = re.search(r"sk-rg-[A-Za-z0-9_-]+", created.stdout)
        line = re.search(r'- "sha256:[0-9a-f]{64}"', created.stdout)
        assert key and line, created.stdout

        docs = tmp_path / "docs"
        docs.mkdir()
        (docs / "office.md").write_text("# Office\n\nThe Berlin office opens at 9:30 every weekday.\n")
        ingested = subprocess.run(
            [*CLI, "ingest", "--tenant", "mydocs", str(docs)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert ingested.returncode == 0 and "1 added" in ingested.stdout, ingested.stdout + ingested.stderr

        (tmp_path / "policies" / "mydocs.yaml").write_text(
            f"tenant: mydocs\napi_keys:\n  {line.group()}\nretrieval:\n  enabled: true\n"
        )
        edited = time.monotonic()
        while True:
            answer = ask(url, key.group(), "When does the Berlin office open?")
            if answer.status_code == 200:
                break
            assert answer.status_code == 401, answer.text
            assert time.monotonic() - edited < 2.0, "the new key was not served within 2 s of the policy edit"
            time.sleep(0.05)
        body = answer.json()
        assert "9:30" in body["choices"][0]["message"]["content"]
        assert [c["source"] for c in body["citations"]][:1] == ["office.md"]
        assert body["citations"][0]["date"] is None  # an undated file stays undated
        # The demo tenant still answers with the demo key, and never sees the new tenant's documents.
        other = ask(url, "sk-demo-rag-gateway", "When does the Berlin office open?")
        assert all(c["source"] != "office.md" for c in other.json()["citations"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
