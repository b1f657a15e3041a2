"""The uploader and transactions: the archive never ends inside an undecided transaction.

A real LogManager and a local-directory store, ticks driven by hand (as in ``test_service``):
an open transaction holds every segment from its first offset on (reported as waiting, health
ok, no roll for the upload interval or the shutdown tail); an aborted transaction whose marker
is not archivable yet holds its records too, also when an upload fails between them and the
marker (the manifest is stored only at a stable end).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamd.log.batch import TRANSACTIONAL
from streamd.tiering import keys
from streamd.tiering.store import ObjectStore, StoreError
from tests.unit.log.batches import simple_batch
from tests.unit.tiering.test_service import T0, TIERED, Env, fill


def txn_batch(n: int, pid: int, seq: int) -> bytes:
    return simple_batch(n, ts=T0, value_size=120, producer_id=pid, producer_epoch=0,
                        base_sequence=seq, attributes=TRANSACTIONAL)


class RefuseSegment:
    """Delegates to a real store but refuses the segment object starting at ``base``."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.base: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put_files(self, key: str, files: Any, **kwargs: Any) -> None:
        span = keys.parse_segment_name(key.rsplit("/", 1)[-1])
        if span is not None and span[0] == self.base:
            raise StoreError("refused (test outage)", retriable=True)
        await self.inner.put_files(key, files, **kwargs)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    yield e
    if e.service is not None:
        e.logs.tiering_veto = None
        await e.service.close()
    await e.logs.close()


async def test_an_open_transaction_holds_uploads_from_its_first_offset(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED)
    plog = env.logs.partition("t", 0)
    await fill(env.logs, "t", 10)
    first = plog.log_end_offset
    await plog.append(txn_batch(2, pid=9, seq=0), now_ms=T0)
    await fill(env.logs, "t", 30)
    assert sum(s.sealed and s.base_offset > first for s in plog.segments) >= 2
    service = await env.open_service()
    await env.tick_and_housekeep()

    assert 0 < service.latest_tiered_offset("t", 0) < first
    part = service.storage_report("t")["partitions"][0]  # type: ignore[index]
    assert part["last_stable_offset"] == first and part["pending_uploads"] == 0
    assert part["uploads_waiting_for_lso"] >= 2 and part["last_error"] is None
    health = service.health()
    assert health["status"] == "ok"
    assert health["upload_waiting_offsets"] == plog.high_watermark - first
    assert health["upload_lag_offsets"] == first - service.latest_tiered_offset("t", 0) - 1

    # Neither the upload interval (the active segment is an hour old) nor shutdown rolls it.
    active = plog.active
    assert not await service.archive_tail(2000)
    assert plog.active is active and not active.sealed

    await plog.append_marker(9, 0, True, now_ms=T0)
    assert await service.archive_tail(5000)
    assert service.latest_tiered_offset("t", 0) == plog.high_watermark - 1
    assert service.health()["upload_waiting_offsets"] == 0


async def test_an_abort_not_yet_archivable_holds_its_records(env: Env) -> None:
    refuse = RefuseSegment(env.bucket)
    env.store = refuse  # type: ignore[assignment]
    env.logs.create_topic("t", 1, TIERED)
    plog = env.logs.partition("t", 0)
    await fill(env.logs, "t", 10)
    first = plog.log_end_offset
    await plog.append(txn_batch(2, pid=9, seq=0), now_ms=T0)
    await fill(env.logs, "t", 15)
    marker = await plog.append_marker(9, 0, False, now_ms=T0)
    assert plog.last_stable_offset == plog.high_watermark  # decided: rule 1 holds nothing
    service = await env.open_service(segment_max_upload_interval_ms=-1, upload_concurrency=1)
    await service.tick()
    # The marker is in the active segment: archiving the sealed ones would put the aborted
    # records in the bucket without their abort.
    assert 0 < service.latest_tiered_offset("t", 0) < first
    part = service.storage_report("t")["partitions"][0]  # type: ignore[index]
    assert part["uploads_waiting_for_lso"] >= 2 and part["pending_uploads"] == 0

    # The marker's segment is sealed now, but its upload fails: what was uploaded before it
    # in the same sync is not admitted past the transaction's first offset.
    await fill(env.logs, "t", 15)
    holder = next(s for s in plog.segments if s.base_offset <= marker.base_offset < s.next_offset)
    assert holder.sealed
    refuse.base = holder.base_offset
    await service.tick()
    state = service._states[("t", 0)]
    assert state.last_error is not None and "refused" in state.last_error
    assert service.latest_tiered_offset("t", 0) < first

    refuse.base = None
    await service.tick()
    assert service.latest_tiered_offset("t", 0) >= marker.base_offset
    assert any(seg.txn_index_key for seg in state.manifest.segments)
