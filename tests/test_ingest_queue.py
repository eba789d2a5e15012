"""The bounds on background ingestion: places reserved per file, a request over the process's
queue or the tenant's share refused whole, resumed files always taken back, and ingestion slots
that run different indexes side by side but one file of an index at a time."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import GatewayError
from gateway.ingest_queue import IngestQueue


def test_a_request_over_the_tenants_share_is_refused_whole() -> None:
    queue = IngestQueue(concurrency=1, max_pending=10, max_per_tenant=3)
    queue.reserve("acme", 2)
    with pytest.raises(GatewayError) as raised:
        queue.reserve("acme", 2)
    assert raised.value.status == 429 and "at most 3" in raised.value.message
    assert raised.value.headers["Retry-After"] == "5"
    assert queue.by_tenant == {"acme": 2} and queue.pending == 2  # nothing of the refused one taken
    queue.reserve("other", 3)  # another tenant's share is its own


def test_a_full_process_queue_is_a_503_until_files_finish() -> None:
    queue = IngestQueue(concurrency=1, max_pending=4, max_per_tenant=4)
    queue.reserve("acme", 3)
    with pytest.raises(GatewayError) as raised:
        queue.reserve("other", 2)
    assert raised.value.status == 503 and raised.value.code == "ingestion_queue_full"
    queue.release("acme", 2)
    queue.reserve("other", 2)
    assert queue.pending == 3 and queue.by_tenant == {"acme": 1, "other": 2}


def test_files_accepted_before_a_stop_are_taken_back_whatever_the_bounds() -> None:
    queue = IngestQueue(concurrency=1, max_pending=1, max_per_tenant=1)
    for _ in range(3):
        queue.reserve("acme", 1, force=True)
    assert queue.pending == 3
    for _ in range(3):
        queue.release("acme")
    assert queue.pending == 0 and queue.by_tenant == {}


async def test_slots_serialise_an_index_and_run_others_side_by_side() -> None:
    queue = IngestQueue(concurrency=2, max_pending=10, max_per_tenant=10)
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    overall = [0, 0]  # now, most

    async def ingest(index: str, release: asyncio.Event) -> None:
        async with queue.slot(index):
            running[index] = running.get(index, 0) + 1
            most[index] = max(most.get(index, 0), running[index])
            overall[0] += 1
            overall[1] = max(overall[1], overall[0])
            await release.wait()
            running[index] -= 1
            overall[0] -= 1

    release = asyncio.Event()
    tasks = [asyncio.create_task(ingest(i, release)) for i in ("a", "a", "b", "c")]
    deadline = asyncio.get_running_loop().time() + 5
    while overall[0] < 2:
        assert asyncio.get_running_loop().time() < deadline, "two indexes should ingest at once"
        await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(*tasks)
    assert most["a"] == 1, "two files of one index were ingested at once"
    assert overall[1] == 2, "more files ran than files.ingest_concurrency allows"
    assert queue._indexes == {}
