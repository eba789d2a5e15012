"""The settle journal: settlements the state store did not take, kept on disk until it does, and
the batches of report lines of requests that had nothing else to settle.

A settle that meets an unreachable or frozen store is appended to this process's journal file
(one JSON line, one `write` to an O_APPEND descriptor, so it survives the process being killed the
next instant) and retried every `retry_s` until the store takes it. Settles are idempotent by
ticket id (see gateway.state.base), so a retry of one that the store did apply before its reply
was lost changes nothing. The file is fsync'd once per retry tick, off the event loop: a machine
crash may lose the last tick's lines; a killed process loses none.

Each process owns one file and holds an exclusive `flock` on its `.lock` companion while it
lives. A journal whose lock is free belongs to a process that died: the first live process to
notice (at start-up, then every `adopt_every_s`) takes its entries over and removes it. So a
replica killed with SIGKILL has its unsettled spend booked by its successor, or by any other
replica sharing the directory.

Batches: on a store where each settle is a network round trip (Redis), a request with no budget
and no token limit has only report lines to book. It is appended like a failed settle (so a kill
loses none) and every `batch_s` all such lines are merged into one settlement per tenant under a
batch id, written back to the file, then sent: one round trip per tenant and tick instead of one
per request. The spend report lags by up to `batch_s`; budgets and limits are never batched.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from gateway.state.base import (
    BATCH_PREFIX,
    BudgetCheck,
    RateCheck,
    Settlement,
    SpendRecord,
    StateBackend,
    StateUnavailable,
    Ticket,
    merge_reports,
)

log = logging.getLogger("rag_gateway.state")


def encode(settlement: Settlement) -> bytes:
    return orjson.dumps(settlement) + b"\n"


def decode(line: bytes) -> Settlement:
    raw: dict[str, Any] = orjson.loads(line)
    ticket = raw["ticket"]
    return Settlement(
        tenant=raw["tenant"],
        ticket=Ticket(
            ticket["id"],
            ticket["at_us"],
            tuple(RateCheck(**r) for r in ticket["rates"]),
            tuple(BudgetCheck(**b) for b in ticket["budgets"]),
        ),
        tokens=raw.get("tokens"),
        cost_nanos=raw.get("cost_nanos", 0),
        records=tuple(SpendRecord(**r) for r in raw.get("records", ())),
    )


def _mergeable(settlement: Settlement) -> bool:
    return settlement.reports_only() and not settlement.ticket.id.startswith(BATCH_PREFIX)


def read_lines(path: Path) -> list[Settlement]:
    """The entries of a journal file; a torn last line (the process died mid-write) is skipped."""
    entries = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            entries.append(decode(line))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("journal %s: skipped an unreadable line (%s)", path, exc)
    return entries


class SettleJournal:
    def __init__(
        self,
        state: StateBackend,
        directory: Path,
        *,
        retry_s: float = 1.0,
        adopt_every_s: float = 10.0,
        batch_s: float = 0.1,
    ) -> None:
        self.state = state
        self.directory = directory
        self.retry_s = retry_s
        self.adopt_every_s = adopt_every_s
        self.batch_s = batch_s
        self.pending: list[Settlement] = []
        self.replayed = 0  # settlements booked from the journal (for metrics and tests)
        name = f"settle-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.path = directory / f"{name}.jsonl"
        self._lock_path = directory / f"{name}.lock"
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._dirty = False  # written since the last fsync
        self._unwritable: str | None = None  # why the folder cannot be written (said once)
        self._failing = False  # the store has refused a settle since the last full replay
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- the request path -------------------------------------------------------------------------

    async def settle(self, settlement: Settlement) -> bool:
        """Settle now (or batch it); if the store cannot take it, journal it for a retry. False when
        it was journalled because the store failed."""
        if self.state.batches_reports and settlement.reports_only():
            self.append(settlement)
            self.start()  # a batch needs the loop that sends it
            return True
        try:
            await self.state.settle(settlement)
            return True
        except StateUnavailable:
            if not self._failing:
                self._failing = True
                log.warning("journal: the state store did not take a settlement; journalling to %s until it "
                            "does", self.path)  # fmt: skip
            self.append(settlement)
            return False

    def append(self, settlement: Settlement) -> None:
        self.pending.append(settlement)
        self._write(encode(settlement))
        self._wake.set()

    # -- the background task ----------------------------------------------------------------------

    def start(self) -> None:
        """Run the replay loop on the running event loop (at start-up: adopt dead processes' files)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        """Replay what is pending and adopt dead processes' journals, until cancelled."""
        next_adopt = 0.0
        while True:
            try:
                if time.monotonic() >= next_adopt:
                    self._adopt_orphans()
                    next_adopt = time.monotonic() + self.adopt_every_s
                if self.pending:
                    await self.replay()
                if self._dirty and self._fd is not None:
                    self._dirty = False
                    await asyncio.to_thread(os.fsync, self._fd)
            except Exception:  # a bug must not stop the journal: what is pending stays pending
                log.exception("journal: replay failed; retrying in %.0fs", self.retry_s)
            if self.pending:  # the store did not take everything: retry later
                await asyncio.sleep(self.retry_s)
                continue
            self._wake.clear()  # idle: the next append wakes the loop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.adopt_every_s)
            if self.pending:
                await asyncio.sleep(self.batch_s)  # let a batch gather

    async def replay(self) -> int:
        """Send the pending settlements in order until the store fails; how many it took."""
        self._merge_batches()
        done = 0
        for settlement in list(self.pending):
            try:
                await self.state.settle(settlement)
            except StateUnavailable:
                self._failing = True
                break
            done += 1
        if done:
            # No await from here on: appends made while replaying are in `pending` and get rewritten.
            del self.pending[:done]
            self.replayed += done
            if self._fd is not None:
                self._rewrite()
        if self._failing and not self.pending:
            self._failing = False
            log.warning("journal: the state store takes settlements again; nothing left to replay")
        return done

    def _merge_batches(self) -> None:
        """Report-only entries (not batches already) as one batch per tenant, written to the file
        before it is sent: a retry then sends the same batch id, never the lines again."""
        if not self.state.batches_reports:
            return
        lines = [s for s in self.pending if _mergeable(s)]
        if len(lines) < 2:
            return  # one line is sent as it is, under its own id
        self.pending[:] = [s for s in self.pending if not _mergeable(s)] + merge_reports(lines)
        if self._fd is not None:
            self._rewrite()

    async def close(self) -> None:
        """One last replay; what the store still cannot take stays on disk for the next process."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.pending:
            await self.replay()
            if self.pending:
                log.warning("journal: %d settlement(s) still unbooked at shutdown, left in %s for the next "
                            "process", len(self.pending), self.path)  # fmt: skip
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if not self.pending:
            self._remove_own_files()

    # -- files ------------------------------------------------------------------------------------

    def _open(self) -> int:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        return self._fd

    def _write(self, data: bytes) -> None:
        try:
            os.write(self._open(), data)
        except OSError as exc:
            # The settlement stays pending in memory and is still retried; only a crash loses it.
            if self._unwritable is None:
                self._unwritable = str(exc)
                log.error("journal: cannot write %s (%s): unsettled spend is kept in memory only; "
                          "set ledger.journal_dir to a writable folder", self.path, exc)  # fmt: skip
            return
        self._dirty = True

    def _rewrite(self) -> None:
        fd = self._open()
        if not self.pending:
            os.ftruncate(fd, 0)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(encode(s) for s in self.pending))
        os.replace(tmp, self.path)
        os.close(fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._dirty = True

    def _remove_own_files(self) -> None:
        if self._lock_fd is None:
            return  # never created any
        for path in (self.path, self.path.with_suffix(".tmp"), self._lock_path):
            path.unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None

    def _adopt_orphans(self) -> None:
        try:
            self._take_over_orphans()
        except OSError as exc:
            log.error("journal: cannot take over dead processes' journals in %s: %s", self.directory, exc)

    def _take_over_orphans(self) -> None:
        """Take over the journals of processes that died (their lock is free). Small files, rarely
        any: done on the loop, so `pending` has one writer."""
        if not self.directory.is_dir():
            return
        for lock_path in self.directory.glob("settle-*.lock"):
            if lock_path == self._lock_path:
                continue
            try:
                fd = os.open(lock_path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
                journal = lock_path.with_suffix(".jsonl")
                entries = read_lines(journal)
                if entries:
                    # Ours first, durably, then theirs removed: a crash in between replays twice,
                    # which the settle ids make harmless; the other order could lose them.
                    data = b"".join(encode(s) for s in entries)
                    fd_own = self._open()
                    os.write(fd_own, data)
                    os.fsync(fd_own)
                    self.pending.extend(entries)
                    log.warning(
                        "journal: took over %d unsettled settlement(s) from %s", len(entries), journal.name
                    )
                journal.unlink(missing_ok=True)
                lock_path.with_suffix(".tmp").unlink(missing_ok=True)
                lock_path.unlink(missing_ok=True)
            finally:
                os.close(fd)
