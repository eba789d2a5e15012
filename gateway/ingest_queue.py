"""Bounds on the background ingestion of files attached to vector stores.

An attach is answered at once (`in_progress`) and ingested later, so without a bound a client
could queue more work than the process will finish in hours, and one tenant's bulk load would
starve every other tenant's. Each file is reserved here before anything is recorded: a request
that would go over the process's queue or the tenant's share of it is refused whole (nothing of
it is attached), with a Retry-After. Files a stopped process left `in_progress` were accepted
already, so they are taken back at start-up whatever the bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gateway.errors import GatewayError

RETRY_AFTER_S = 5


class IngestQueue:
    def __init__(self, concurrency: int, max_pending: int, max_per_tenant: int) -> None:
        self.max_pending = max_pending
        self.max_per_tenant = max_per_tenant
        self.pending = 0  # files reserved and not yet finished (waiting or being ingested)
        self.by_tenant: dict[str, int] = {}
        # Created on first use: it binds to the running loop.
        self._concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
        self._indexes: dict[str, tuple[asyncio.Lock, int]] = {}  # one writer per index, and its users

    def reserve(self, tenant: str, files: int, force: bool = False) -> None:
        """Take `files` places, or raise the error that says why not (nothing is taken then)."""
        mine = self.by_tenant.get(tenant, 0)
        if not force and mine + files > self.max_per_tenant:
            raise GatewayError(
                429,
                f"This tenant already has {mine} files waiting to be ingested and may have at most "
                f"{self.max_per_tenant} (files.ingest_queue_per_tenant); attach these {files} once "
                "some have completed.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if not force and self.pending + files > self.max_pending:
            raise GatewayError(
                503,
                f"The gateway is ingesting {self.pending} files (files.ingest_queue_max is "
                f"{self.max_pending}); retry shortly.",
                type="server_error",
                code="ingestion_queue_full",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.pending += files
        self.by_tenant[tenant] = mine + files

    def release(self, tenant: str, files: int = 1) -> None:
        if files <= 0:
            return
        self.pending -= files
        left = self.by_tenant.get(tenant, 0) - files
        if left > 0:
            self.by_tenant[tenant] = left
        else:
            self.by_tenant.pop(tenant, None)

    @contextlib.asynccontextmanager
    async def slot(self, index: str) -> AsyncIterator[None]:
        """One of the `concurrency` places where a file is being ingested. Files of one index
        take turns: an index's chunk writes and its BM25 rebuild are not made to interleave."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._concurrency)
        lock, users = self._indexes.get(index) or (asyncio.Lock(), 0)
        self._indexes[index] = (lock, users + 1)
        try:
            async with lock, self._slots:
                yield
        finally:
            lock, users = self._indexes[index]
            if users == 1:
                del self._indexes[index]  # its last user: no lock kept per index ever used
            else:
                self._indexes[index] = (lock, users - 1)
