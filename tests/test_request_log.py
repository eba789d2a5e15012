"""The request log's writer: rotation, and surviving a failing disk."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

import gateway.request_log as request_log_module
from gateway.config import RequestLogConfig
from gateway.request_log import RequestLog


def lines_in(*paths: Path) -> list[int]:
    found = []
    for path in paths:
        if path.exists():
            found += [orjson.loads(line)["n"] for line in path.read_bytes().splitlines()]
    return sorted(found)


def stopped_log(path: Path, max_bytes: int, backups: int) -> RequestLog:
    """A log whose writer thread is stopped, so the test decides when a batch is written."""
    log = RequestLog(RequestLogConfig(enabled=True, path=str(path), max_bytes=max_bytes, backups=backups))
    log.close()
    return log


def test_rotation_keeps_every_line_in_order(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    log = stopped_log(path, max_bytes=1024, backups=3)
    for n in range(20):
        log.write({"n": n, "pad": "x" * 300})
        log._flush()
    log.close()
    backups = [path.with_name(f"requests.jsonl.{i}") for i in (1, 2, 3)]
    assert all(p.exists() for p in backups) and path.stat().st_size <= 1024
    assert not path.with_name("requests.jsonl.4").exists()  # only 3 backups are kept
    # Newest in the live file, then .1, .2, .3: together the latest lines, none lost in between.
    kept = lines_in(path, *backups)
    assert kept == list(range(kept[0], 20)) and 19 in lines_in(path)
    assert max(lines_in(backups[0])) < min(lines_in(path)) and max(lines_in(backups[1])) < min(
        lines_in(backups[0])
    )


def test_a_failed_rotation_does_not_stop_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "requests.jsonl"
    log = stopped_log(path, max_bytes=1024, backups=1)
    log.write({"n": 0, "pad": "x" * 900})
    log._flush()
    real_replace = os.replace
    calls = {"n": 0}

    def failing_once(src: object, dst: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(request_log_module.os, "replace", failing_once)
    log.write({"n": 1, "pad": "x" * 300})
    log._flush()  # rotation fails: this batch is dropped, reported on stderr
    log.write({"n": 2, "pad": "x" * 10})
    log._flush()  # the next batch is written again
    log.close()
    assert 2 in lines_in(path, path.with_name("requests.jsonl.1"))
