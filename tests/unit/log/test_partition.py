import asyncio
import os
from pathlib import Path

import pytest

from streamd.errors import CorruptMessage, MessageTooLarge, OffsetOutOfRange
from streamd.log.batch import iter_record_timestamps, validate_produce_batches
from streamd.log.partition import PartitionLog

from .batches import build_batch, simple_batch
from .helpers import config, fill, open_log, read_all


async def test_append_assigns_dense_offsets_and_reads_back(tmp_path: Path) -> None:
    plog = open_log(tmp_path)
    r1 = await plog.append(simple_batch(3), now_ms=1)
    r2 = await plog.append(simple_batch(2) + simple_batch(4), now_ms=1)
    assert (r1.base_offset, r1.last_offset, r1.log_append_time_ms) == (0, 2, -1)
    assert (r2.base_offset, r2.last_offset) == (3, 8)
    assert plog.log_end_offset == plog.high_watermark == 9
    assert read_all(plog, 0) == [(0, 2), (3, 4), (5, 8)]
    assert read_all(plog, 6) == [(5, 8)]
    assert plog.read(9, 1000) is None
    with pytest.raises(OffsetOutOfRange):
        plog.read(10, 1000)
    await plog.close()


async def test_rejected_payload_appends_nothing(tmp_path: Path) -> None:
    plog = open_log(tmp_path, max_message_bytes="1000")
    await plog.append(simple_batch(1), now_ms=1)
    size = plog.size_bytes
    bad = bytearray(simple_batch(1))
    bad[-1] ^= 1
    with pytest.raises(CorruptMessage):
        await plog.append(simple_batch(1) + bytes(bad), now_ms=1)
    with pytest.raises(MessageTooLarge):
        await plog.append(simple_batch(1, value_size=2000), now_ms=1)
    assert plog.size_bytes == size and plog.log_end_offset == 1
    assert plog.segments[-1].path.stat().st_size == size
    await plog.close()


async def test_log_append_time(tmp_path: Path) -> None:
    plog = open_log(tmp_path, message_timestamp_type="LogAppendTime")
    result = await plog.append(simple_batch(2, ts=5), now_ms=777)
    assert result.log_append_time_ms == 777
    piece = plog.read(0, 1 << 20)
    assert piece is not None
    assert list(iter_record_timestamps(piece.read_bytes())) == [(0, 777), (1, 777)]
    await plog.close()


async def test_roll_by_size_and_by_time(tmp_path: Path) -> None:
    plog = open_log(tmp_path, segment_ms="1000")
    await fill(plog, 12, now_ms=0)
    assert len(plog.segments) > 2
    assert all(s.size <= 2048 for s in plog.segments)
    assert all(s.sealed for s in plog.segments[:-1]) and not plog.segments[-1].sealed
    assert [s.base_offset for s in plog.segments[1:]] == [s.next_offset for s in plog.segments[:-1]]
    count = len(plog.segments)
    assert not plog.roll_if_due(999)
    assert plog.roll_if_due(1000)
    assert len(plog.segments) == count + 1 and plog.segments[-1].is_empty
    assert not plog.roll_if_due(10_000)
    await plog.append(simple_batch(1), now_ms=20_000)
    await plog.append(simple_batch(1), now_ms=20_500)
    assert len(plog.segments) == count + 1
    await plog.append(simple_batch(1), now_ms=21_000)
    assert len(plog.segments) == count + 2
    await plog.close()


async def test_retention_by_time(tmp_path: Path) -> None:
    plog = open_log(tmp_path)
    await fill(plog, 12, ts=1000)
    first, second = plog.segments[0], plog.segments[1]
    removed = plog.apply_retention(first.max_timestamp + 100, retention_ms=100, retention_bytes=-1)
    assert removed == []
    removed = plog.apply_retention(first.max_timestamp + 101, retention_ms=100, retention_bytes=-1)
    assert removed == [first] and not first.path.exists()
    assert plog.log_start_offset == second.base_offset
    with pytest.raises(OffsetOutOfRange):
        plog.read(0, 100)
    removed = plog.apply_retention(10**12, retention_ms=100, retention_bytes=-1)
    assert len(plog.segments) == 1 and plog.log_start_offset == plog.segments[0].base_offset
    await plog.close()
    reopened = open_log(tmp_path)
    assert reopened.log_start_offset == plog.log_start_offset
    await reopened.close()


async def test_retention_by_bytes_and_veto(tmp_path: Path) -> None:
    plog = open_log(tmp_path)
    await fill(plog, 20)
    sizes = [s.size for s in plog.segments]
    limit = sum(sizes[2:])
    vetoed = plog.segments[1]
    removed = plog.apply_retention(
        0, retention_ms=-1, retention_bytes=limit, may_delete=lambda s: s is not vetoed
    )
    assert [s.base_offset for s in removed] == [0]
    removed = plog.apply_retention(0, retention_ms=-1, retention_bytes=limit)
    assert removed == [vetoed]
    assert plog.size_bytes >= limit
    assert plog.apply_retention(0, retention_ms=-1, retention_bytes=limit) == []
    await plog.close()


async def test_retention_bytes_inside_a_segment_keeps_at_least_the_limit(tmp_path: Path) -> None:
    """The limit falls inside the second segment: that segment must stay (deleting it would
    keep less than retention.bytes); only the first one goes."""
    plog = open_log(tmp_path)
    await fill(plog, 20)
    sizes = [s.size for s in plog.segments]
    assert len(sizes) >= 4
    limit = sum(sizes[2:]) + sizes[1] // 2
    second = plog.segments[1]
    removed = plog.apply_retention(0, retention_ms=-1, retention_bytes=limit)
    assert [s.base_offset for s in removed] == [0]
    assert plog.segments[0] is second and plog.log_start_offset == second.base_offset
    assert plog.size_bytes >= limit
    assert plog.size_bytes - second.size < limit
    assert plog.apply_retention(0, retention_ms=-1, retention_bytes=limit) == []
    await plog.close()


async def test_delete_records(tmp_path: Path) -> None:
    plog = open_log(tmp_path)
    await fill(plog, 12)
    seg1_end = plog.segments[0].next_offset
    assert plog.delete_records_before(seg1_end + 1) == seg1_end + 1
    assert plog.segments[0].base_offset == seg1_end
    with pytest.raises(OffsetOutOfRange):
        plog.read(seg1_end, 100)
    assert read_all(plog, seg1_end + 1)[0][0] == seg1_end
    with pytest.raises(OffsetOutOfRange):
        plog.delete_records_before(plog.high_watermark + 1)
    assert plog.delete_records_before(3) == seg1_end + 1
    end = plog.log_end_offset
    assert plog.delete_records_before(-1) == end
    assert len(plog.segments) == 1 and plog.segments[0].is_empty
    assert plog.read(end, 100) is None
    r = await plog.append(simple_batch(1), now_ms=1)
    assert r.base_offset == end and r.log_start_offset == end
    await plog.close()
    reopened = open_log(tmp_path)
    assert (reopened.log_start_offset, reopened.log_end_offset) == (end, end + 1)
    await reopened.close()


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
async def test_offset_for_timestamp_across_segments(tmp_path: Path, codec: str | None) -> None:
    plog = open_log(tmp_path)
    ts = 10_000
    for _ in range(30):
        recs = [(None, os.urandom(60), [], ts + 3 * i) for i in range(5)]
        await plog.append(build_batch(recs, compression=codec), now_ms=1)
        ts += 15
    assert len(plog.segments) > 2
    assert plog.offset_for_timestamp(0) == (0, 10_000)
    assert plog.offset_for_timestamp(10_001) == (1, 10_003)
    assert plog.offset_for_timestamp(10_000 + 15 * 17 + 7) == (17 * 5 + 3, 10_000 + 15 * 17 + 9)
    for seg in plog.segments[1:]:
        batch_ts = 10_000 + 15 * (seg.base_offset // 5)
        assert plog.offset_for_timestamp(batch_ts - 1) == (seg.base_offset, batch_ts)
    assert plog.offset_for_timestamp(ts) is None
    plog.delete_records_before(12)
    assert plog.offset_for_timestamp(0) == (12, 10_000 + 15 * 2 + 6)
    await plog.close()


async def test_fsync_always_group_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    plog = open_log(tmp_path, fsync="always", segment_bytes=str(1 << 20))
    calls.clear()
    results = await asyncio.gather(*(plog.append(simple_batch(1), now_ms=1) for _ in range(50)))
    assert sorted(r.base_offset for r in results) == list(range(50))
    assert 1 <= len(calls) <= 3
    assert plog.high_watermark == 50
    await plog.close()


async def test_fsync_always_hw_waits_for_fsync(tmp_path: Path) -> None:
    plog = open_log(tmp_path, fsync="always")
    await plog.append(simple_batch(1), now_ms=1)
    task = asyncio.ensure_future(plog.append(simple_batch(1), now_ms=1))
    await asyncio.sleep(0)
    assert plog.log_end_offset == 2
    assert plog.high_watermark == 1
    assert read_all(plog, 0) == [(0, 0)]
    await task
    assert plog.high_watermark == 2 and read_all(plog, 0) == [(0, 0), (1, 1)]
    await plog.close()


async def test_interval_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    plog = open_log(tmp_path, fsync="50")
    calls.clear()
    await fill(plog, 3)
    assert calls == [] and plog.high_watermark == 9
    await plog.flush()
    assert len(calls) == 1
    await plog.flush()
    assert len(calls) == 1
    await plog.close()


async def test_read_is_whole_batches_from_one_segment(tmp_path: Path) -> None:
    plog = open_log(tmp_path)
    await fill(plog, 12)
    first = plog.segments[0]
    piece = plog.read(1, 1 << 20)
    assert piece is not None and piece.path == first.path and piece.length == first.size
    last = validate_produce_batches(piece.read_bytes(), 1 << 20)[-1]
    assert last.next_offset == first.next_offset
    one = plog.read(4, 10)
    assert one is not None and len(validate_produce_batches(one.read_bytes(), 1 << 20)) == 1
    assert plog.read(4, 10, min_one=False) is None
    await plog.close()


async def test_open_empty_then_truncate_fully(tmp_path: Path) -> None:
    plog = PartitionLog.open(tmp_path / "p", config())
    assert (plog.log_start_offset, plog.log_end_offset) == (0, 0)
    plog.truncate_fully_and_start_at(500)
    r = await plog.append(simple_batch(2), now_ms=1)
    assert r.base_offset == 500
    await plog.close()
    again = open_log(tmp_path / "p")
    assert (again.log_start_offset, again.log_end_offset) == (500, 502)
    await again.close()
