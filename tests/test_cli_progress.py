"""`rag-gateway ingest` and `reindex` show progress: a bar on a terminal, plain lines in a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gateway.progress import describe
from gateway.retrieval.ingest import FileReport, IngestReport

CLI = [sys.executable, "-m", "gateway"]


def _docs(root: Path, count: int) -> Path:
    docs = root / "docs"
    docs.mkdir()
    for i in range(count):
        (docs / f"note-{i}.md").write_text(f"# Note {i}\n\nThe locker code for room {i} is {1000 + i}.\n")
    return docs


def _config(root: Path) -> Path:
    config = root / "gateway.yaml"
    config.write_text(yaml.safe_dump({"retrieval": {"enabled": True}}))  # its index under root/.data
    return config


def _env() -> dict[str, str]:
    return {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COLUMNS": "120"}


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with stdout and stderr captured: pipes, not a terminal."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=_env(), cwd=root, timeout=120)


def test_describe_counts_files_chunks_rate_and_eta() -> None:
    report = IngestReport("t", files_total=4, chunks_embedded=50)
    report.files = [FileReport("a", "added", 25), FileReport("b", "added", 25)]
    assert describe(report, 10.0) == "2/4 files, 50 chunks, 5.0 chunks/s, ETA 0:10"
    report.files.extend([FileReport("c", "added"), FileReport("d", "added")])
    assert "ETA" not in describe(report, 20.0)


def test_ingest_in_a_pipe_prints_plain_lines_and_the_report(tmp_path: Path) -> None:
    docs, config = _docs(tmp_path, 3), _config(tmp_path)
    done = _run(tmp_path, "ingest", "--config", str(config), "--tenant", "acme", str(docs))
    assert done.returncode == 0, done.stderr
    assert "3 added" in done.stdout
    progress = [line for line in done.stderr.splitlines() if line.startswith("ingest acme: ")]
    assert progress and progress[-1].startswith("ingest acme: 3/3 files, 3 chunks, "), done.stderr
    assert "\r" not in done.stderr  # no bar redraws in a log

    again = _run(tmp_path, "reindex", "--config", str(config), "--tenant", "acme")
    assert again.returncode == 0, again.stderr
    assert "rebuilt 3 documents (3 chunks)" in again.stdout
    assert "reindex acme: 3/3 files, 3 chunks, " in again.stderr


def test_ingest_on_a_terminal_draws_a_bar(tmp_path: Path) -> None:
    docs, config = _docs(tmp_path, 3), _config(tmp_path)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, "ingest", "--config", str(config), "--tenant", "acme", str(docs)],
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=_env(),
        cwd=tmp_path,
    )
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            data = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not data:
            break
        seen += data
    os.close(controller)
    assert proc.wait(30) == 0
    text = seen.decode(errors="replace")
    assert "ingest acme" in text and "3/3" in text and "chunks/s" in text and "\r" in text, text
