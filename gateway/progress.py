"""Progress of a CLI ingest or reindex: a bar on a terminal, plain lines in a log or a pipe.

The work runs on the calling thread and fills an IngestReport as files are done; a watcher thread
reads that report a few times a second and renders it, so the ingest code knows nothing of output.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

from gateway.retrieval.ingest import IngestReport

T = TypeVar("T")
BAR_REFRESH_S = 0.2
LINE_EVERY_S = 5.0  # plain output: one line this often, so a CI log shows it is moving


def chunks_line(report: IngestReport, elapsed_s: float) -> str:
    """`340 chunks, 85.2 chunks/s`: the bar's postfix and part of the plain line."""
    rate = report.chunks_embedded / elapsed_s if elapsed_s > 0 else 0.0
    return f"{report.chunks_embedded} chunks, {rate:.1f} chunks/s"


def describe(report: IngestReport, elapsed_s: float) -> str:
    """`12/40 files, 340 chunks, 85.2 chunks/s, ETA 0:20` (ETA from the files still to do)."""
    done, total = len(report.files), report.files_total
    text = f"{done}/{total or '?'} files, {chunks_line(report, elapsed_s)}"
    if 0 < done < total:
        remaining = elapsed_s / done * (total - done)
        text += f", ETA {int(remaining // 60)}:{int(remaining % 60):02d}"
    return text


class ProgressWatcher:
    def __init__(self, label: str, report: IngestReport, out: TextIO, tty: bool) -> None:
        self.label = label
        self.report = report
        self.out = out
        self.tty = tty
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-progress", daemon=True)

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        if self.tty:
            self._bar()
        else:
            self._lines()

    def _bar(self) -> None:
        from tqdm import tqdm  # only the CLI draws a bar: imported here, not at start-up

        # A terminal that reports no size (a bare pty) would get no bar at all from tqdm.
        size = shutil.get_terminal_size()
        with tqdm(
            desc=self.label, unit="file", file=self.out, ncols=size.columns or 100, nrows=size.lines or 24
        ) as bar:
            while True:
                stopping = self._stop.wait(BAR_REFRESH_S)
                report = self.report
                if report.files_total and bar.total != report.files_total:
                    bar.total = report.files_total
                bar.n = len(report.files)
                elapsed = time.perf_counter() - self.started
                bar.set_postfix_str(chunks_line(report, elapsed), refresh=False)
                bar.refresh()
                if stopping:
                    return

    def _lines(self) -> None:
        while True:
            stopping = self._stop.wait(LINE_EVERY_S)
            print(f"{self.label}: {describe(self.report, time.perf_counter() - self.started)}", file=self.out)
            self.out.flush()
            if stopping:  # the last line is the final count
                return


def with_progress(label: str, report: IngestReport, work: Callable[[], T], out: TextIO | None = None) -> T:
    """Run `work` (which fills `report`) while showing its progress on `out` (stderr by default)."""
    stream = out if out is not None else sys.stderr
    with ProgressWatcher(label, report, stream, tty=stream.isatty()):
        return work()
