"""Seed corpora ingested in the background, so start-up never waits on ingestion.

The gateway answers /healthz as soon as it listens; each configured seed corpus (the demo's
sample corpus, `retrieval.seed_corpus`) is ingested afterwards, one tenant at a time, in a
thread. While a tenant's index is being built from empty, its retrieval stage answers 503
`retrieval_warming` with Retry-After: an answer from half a corpus would look like a real one.
A tenant whose index already holds a corpus (a restart) keeps being served while the incremental
sync checks it. /readyz reports each seed's progress and is ready once every one is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError

if TYPE_CHECKING:  # the ingest pipeline is imported only when there is something to ingest
    from gateway.retrieval.ingest import Ingestor, IngestReport

log = logging.getLogger("rag_gateway.warmup")


@dataclass(slots=True)
class SeedProgress:
    tenant: str
    folder: str
    blocking: bool  # the index was empty: requests wait for it
    report: IngestReport = field(init=False)
    started: float = field(default_factory=time.monotonic)
    done: bool = False
    error: str | None = None

    def __post_init__(self) -> None:
        from gateway.retrieval.ingest import IngestReport

        self.report = IngestReport(self.tenant)

    def describe(self) -> dict[str, Any]:
        report = self.report
        return {
            "tenant": self.tenant,
            "done": self.done,
            "error": self.error,
            "files_done": len(report.files),
            "files_total": report.files_total,
            "chunks_embedded": report.chunks_embedded,
            "seconds": round(time.monotonic() - self.started, 1),
        }


class CorpusWarmup:
    """The seed ingests of this process and how far each has got."""

    def __init__(self, retry_after_s: int = 5) -> None:
        self.retry_after_s = retry_after_s
        self._seeds: dict[str, SeedProgress] = {}

    @property
    def seeds(self) -> list[SeedProgress]:
        return list(self._seeds.values())

    @property
    def ready(self) -> bool:
        """Every seed ingested without an error (what /readyz requires)."""
        return all(seed.done and seed.error is None for seed in self._seeds.values())

    def plan(self, tenant: str, folder: str, index_is_empty: bool) -> SeedProgress:
        seed = self._seeds[tenant] = SeedProgress(tenant, folder, blocking=index_is_empty)
        return seed

    def check(self, tenant: str) -> None:
        """Raise the 503 for a tenant whose corpus is still being built from empty."""
        seed = self._seeds.get(tenant)
        if seed is None or seed.done or not seed.blocking:
            return
        progress = seed.describe()
        done, total = progress["files_done"], progress["files_total"] or "?"
        raise GatewayError(
            503,
            f"This tenant's document index is still being built ({done} of {total} files, "
            f"{progress['chunks_embedded']} chunks so far); retry in a few seconds.",
            type="server_error",
            code="retrieval_warming",
            headers={"Retry-After": str(self.retry_after_s)},
        )

    async def run(self, make_ingestor: Callable[[str], Ingestor]) -> None:
        """Ingest every planned seed, in order, off the event loop."""
        from gateway.retrieval.ingest import format_report

        for seed in self.seeds:
            ingestor = None
            ingest: asyncio.Future[IngestReport] | None = None
            try:
                ingestor = make_ingestor(seed.tenant)
                ingest = asyncio.ensure_future(
                    asyncio.to_thread(
                        ingestor.ingest_paths, seed.tenant, [Path(seed.folder)], sync=True, report=seed.report
                    )
                )
                await asyncio.shield(ingest)
                log.info("seed corpus for %r:\n%s", seed.tenant, format_report(seed.report))
            except asyncio.CancelledError:
                if ingestor is not None and ingest is not None:
                    # The thread ends after its current file or embedding slice; wait for it, so
                    # that shutdown does not close the store under a write.
                    ingestor.stopping.set()
                    with contextlib.suppress(Exception):
                        await ingest
                raise
            except Exception as exc:  # a broken seed must not take the gateway down with it
                seed.error = f"{type(exc).__name__}: {exc}"
                log.exception("seed corpus for %r failed", seed.tenant)
            finally:
                seed.done = True
