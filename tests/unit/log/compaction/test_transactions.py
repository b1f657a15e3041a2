"""Compaction of a transactional compacted partition, as Kafka's cleaner does it: aborted
records go at once, a marker stays while its transaction has data and then for
delete.retention.ms, the aborted-transaction index follows, read_committed state never changes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from streamd.log.batch import CONTROL, TRANSACTIONAL
from streamd.log.compaction.cleaner import CleanerSettings, LogCleaner
from streamd.log.manager import LogManager
from streamd.log.partition import PartitionLog

from ..batches import build_batch
from .helpers import COMPACTED, read_records

Row = tuple[bytes, bytes]


class Producer:
    def __init__(self, plog: PartitionLog, pid: int) -> None:
        self.plog, self.pid, self.seq = plog, pid, 0

    async def send(self, rows: Sequence[Row]) -> None:
        records = [(k, v, [], 1_000 + i) for i, (k, v) in enumerate(rows)]
        batch = build_batch(
            records,
            producer_id=self.pid,
            producer_epoch=0,
            base_sequence=self.seq,
            attributes=TRANSACTIONAL,
        )
        self.seq += len(rows)
        await self.plog.append(batch, now_ms=1_000)

    async def end(self, commit: bool) -> None:
        await self.plog.append_marker(self.pid, 0, commit, now_ms=1_000)


async def plain(plog: PartitionLog, rows: Sequence[Row]) -> None:
    await plog.append(build_batch([(k, v, [], 1_000) for k, v in rows]), now_ms=1_000)


def markers(plog: PartitionLog) -> list[int]:
    """Offsets of the control batches that still hold their record."""
    return [
        h.base_offset
        for s in plog.segments
        for _, h in s.iter_headers()
        if h.attributes & CONTROL and h.records_count
    ]


def committed(plog: PartitionLog) -> dict[bytes, bytes]:
    """The state a read_committed key-value reader rebuilds (aborted ranges skipped)."""
    aborted = plog.aborted_transactions(0, plog.log_end_offset)
    state: dict[bytes, bytes] = {}
    for offset, key, value in read_records(plog):
        if key is None or key.startswith(b"\x00\x00"):
            continue  # control records
        if any(a.first_offset <= offset <= a.last_offset for a in aborted):
            continue
        assert value is not None
        state[key] = value
    return state


@pytest.fixture
async def logs(tmp_path: Path):  # type: ignore[no-untyped-def]
    manager = LogManager(tmp_path)
    manager.load()
    yield manager
    await manager.close()


async def test_aborted_records_go_and_their_marker_outlives_them(logs: LogManager) -> None:
    cleaner = LogCleaner(logs, CleanerSettings(map_bytes=1 << 20))
    plog = logs.create_topic("tx", 1, COMPACTED).partitions[0]
    one, two = Producer(plog, 1), Producer(plog, 2)
    await one.send([(b"a", b"a1"), (b"b", b"b1")])
    await one.end(commit=True)
    await two.send([(b"a", b"aborted"), (b"c", b"aborted")])
    await two.end(commit=False)
    await plain(plog, [(b"d", b"d1")])
    await two.send([(b"e", b"e1")])
    await two.end(commit=True)
    await one.send([(b"b", b"b2")])
    await one.end(commit=True)
    plog.seal_active()
    state = committed(plog)
    assert state == {b"a": b"a1", b"b": b"b2", b"d": b"d1", b"e": b"e1"}
    abort_at = plog.aborted_transactions(0, plog.log_end_offset)[0].last_offset
    try:
        assert await cleaner.clean_once(10_000)
        values = {v for _, _, v in read_records(plog)}
        assert b"aborted" not in values, "aborted records are removed at once"
        assert committed(plog) == state
        assert abort_at in markers(plog), "kept while this pass still saw its transaction"
        assert [a.last_offset for a in plog.aborted_transactions(0, plog.log_end_offset)] == [
            abort_at
        ], "and re-indexed in the cleaned segment"

        await plain(plog, [(b"f", b"f1")])
        plog.seal_active()
        assert await cleaner.clean_once(20_000)
        assert abort_at in markers(plog), "discardable now: kept until its delete horizon"
        assert not await cleaner.clean_once(20_999)
        assert await cleaner.clean_once(21_000)
        assert abort_at not in markers(plog)
        assert plog.aborted_transactions(0, plog.log_end_offset) == []
        assert committed(plog) == state | {b"f": b"f1"}
    finally:
        await cleaner.stop()
    await logs.close()
    reopened = LogManager(logs.data_dir)
    reopened.load()
    again = reopened.partition("tx", 0)
    assert committed(again) == state | {b"f": b"f1"}
    assert again.last_stable_offset == again.high_watermark
    await reopened.close()


async def test_a_commit_marker_stays_while_its_transaction_has_data(logs: LogManager) -> None:
    cleaner = LogCleaner(logs, CleanerSettings(map_bytes=1 << 20))
    plog = logs.create_topic("tc", 1, COMPACTED).partitions[0]
    one, two = Producer(plog, 1), Producer(plog, 2)
    await one.send([(b"a", b"a1")])
    await one.end(commit=True)
    commit_at = plog.log_end_offset - 1
    await two.send([(b"b", b"b1")])
    await two.end(commit=True)
    await plain(plog, [(b"x", b"x")])
    plog.seal_active()
    try:
        assert await cleaner.clean_once(10_000)
        assert commit_at in markers(plog)
        await one.send([(b"a", b"a2")])  # supersedes the only record of the first transaction
        await one.end(commit=True)
        await plain(plog, [(b"y", b"y")])
        plog.seal_active()
        assert await cleaner.clean_once(20_000)
        assert commit_at in markers(plog), "its data was still seen by that pass"
        await plain(plog, [(b"z", b"z")])
        plog.seal_active()
        assert await cleaner.clean_once(30_000)
        assert commit_at in markers(plog), "now discardable: kept until the horizon"
        assert await cleaner.clean_once(31_000)
        assert commit_at not in markers(plog)
        assert committed(plog) == {b"a": b"a2", b"b": b"b1", b"x": b"x", b"y": b"y", b"z": b"z"}
    finally:
        await cleaner.stop()
