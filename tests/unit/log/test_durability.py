"""Invariant 11 in the log layer: a write that cannot happen fails its waiters, nothing is
acknowledged that is not in the file, and a full disk is a pause, not a failure."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

import streamd.log.flusher as flusher_mod
from streamd.errors import StorageError
from streamd.log.batch import validate_produce_batches
from streamd.log.flusher import SharedFlusher
from streamd.log.fsync import FsyncPolicy
from streamd.log.partition import PartitionLog

from .batches import simple_batch
from .helpers import config, open_log, read_all


async def test_a_file_closed_under_staged_appends_fails_them(tmp_path: Path) -> None:
    """The flusher used to skip a write to a closed descriptor and report success: the high
    watermark moved and the ack went out for bytes that were never written."""
    plog = open_log(tmp_path, fsync="always")
    await plog.append(simple_batch(2), now_ms=1)
    staged = plog.stage_append(simple_batch(3), now_ms=1)
    plog.active.file.close()
    with pytest.raises(StorageError):
        await plog.wait_durable(staged)
    assert plog.high_watermark == 2
    plog.discard()
    reopened = open_log(tmp_path, fsync="always")
    assert reopened.log_end_offset == 2
    await reopened.close()


async def test_appends_during_close_are_refused_or_durable(tmp_path: Path) -> None:
    """Close refuses new appends first, flushes what was staged (those waiters succeed), and
    only then closes the files: an append that succeeded is in the file after reopening."""
    plog = open_log(tmp_path, fsync="always")
    staged = [plog.stage_append(simple_batch(1, ts=10 + i), now_ms=1) for i in range(5)]
    waiters = [asyncio.ensure_future(plog.wait_durable(r)) for r in staged]
    closing = asyncio.ensure_future(plog.close())
    await asyncio.sleep(0)
    late: list[object] = []
    while not closing.done():
        try:
            result = plog.stage_append(simple_batch(1), now_ms=1)
        except StorageError:
            late.append(None)
        else:
            late.append(asyncio.ensure_future(plog.wait_durable(result)))
        await asyncio.sleep(0)
    await closing
    await asyncio.gather(*waiters)
    late_waiters = [f for f in late if isinstance(f, asyncio.Future)]
    outcome = await asyncio.gather(*late_waiters, return_exceptions=True)
    acked = 5 + sum(1 for o in outcome if not isinstance(o, BaseException))
    assert any(f is None for f in late), "appends after close started must be refused"
    reopened = open_log(tmp_path, fsync="always")
    assert reopened.log_end_offset >= acked == 5
    assert [b for b, _ in read_all(reopened, 0)] == list(range(reopened.log_end_offset))
    await reopened.close()


def _fail_writes_with(monkeypatch: pytest.MonkeyPatch, code: int, after: int = 0) -> list[int]:
    """os.write in the flusher fails with ``code`` once ``after`` bytes went through."""
    written = [0]
    real = os.write

    def write(fd: int, data: memoryview) -> int:  # type: ignore[type-arg]
        room = after - written[0]
        if room <= 0:
            raise OSError(code, os.strerror(code))
        n = real(fd, data[:room])
        written[0] += n
        return n

    monkeypatch.setattr(flusher_mod.os, "write", write)
    return written


async def test_out_of_space_drops_the_unacknowledged_tail_and_appends_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plog = open_log(tmp_path, fsync="always", segment_bytes="1048576")
    for i in range(3):
        await plog.append(simple_batch(2, ts=100 + i), now_ms=1)
    durable_size = plog.active.size
    batch = simple_batch(4, producer_id=7, producer_epoch=0, base_sequence=0)
    retry = simple_batch(4, producer_id=7, producer_epoch=0, base_sequence=0)
    _fail_writes_with(monkeypatch, errno.ENOSPC, after=100)  # a torn write: part is on disk
    with pytest.raises(StorageError, match="No space left"):
        await plog.append(batch, now_ms=1)
    assert plog.log_end_offset == plog.high_watermark == 6
    assert plog.active.size == durable_size and plog.active.path.stat().st_size == durable_size
    assert plog.disk.full
    with pytest.raises(StorageError, match="disk is full"):
        plog.stage_append(simple_batch(1), now_ms=1)
    monkeypatch.undo()
    monkeypatch.setattr(plog.disk, "free_bytes", lambda: 1 << 40)
    monkeypatch.setattr("streamd.log.disk.CHECK_INTERVAL_S", 0)
    plog.disk.writable()  # the baseline, taken after the failed write was cut off
    result = await plog.append(retry, now_ms=1)  # the idempotent retry is accepted, in place
    assert (result.base_offset, result.last_offset) == (6, 9)
    assert not plog.disk.full
    assert [b for b, _ in read_all(plog, 0)] == [0, 2, 4, 6]
    await plog.close()
    reopened = open_log(tmp_path, fsync="always")
    assert reopened.log_end_offset == 10
    await reopened.close()


async def test_out_of_space_after_a_roll_removes_the_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plog = open_log(tmp_path, fsync="always", segment_bytes="2048", index_interval_bytes="1")
    for i in range(6):
        await plog.append(simple_batch(3, ts=100 + i, value_size=100), now_ms=1)
    before = ([s.base_offset for s in plog.segments], plog.log_end_offset)
    entries = plog.active.offset_index.entries()
    max_ts = plog.active.max_timestamp
    _fail_writes_with(monkeypatch, errno.ENOSPC)
    staged = [
        plog.stage_append(simple_batch(3, ts=900, value_size=300), now_ms=1) for _ in range(6)
    ]
    assert len(plog.segments) > len(before[0]), "the staged appends rolled a segment"
    outcome = await asyncio.gather(*(plog.wait_durable(r) for r in staged), return_exceptions=True)
    assert all(isinstance(o, StorageError) for o in outcome), outcome
    assert ([s.base_offset for s in plog.segments], plog.log_end_offset) == before
    assert plog.active.offset_index.entries() == entries
    assert plog.active.max_timestamp == max_ts and not plog.active.sealed
    assert sorted(p.name for p in tmp_path.glob("*.log")) == [s.path.name for s in plog.segments]
    plog.discard()


async def test_an_io_error_is_not_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plog = open_log(tmp_path, fsync="always")
    _fail_writes_with(monkeypatch, errno.EIO)
    with pytest.raises(StorageError):
        await plog.append(simple_batch(1), now_ms=1)
    monkeypatch.undo()
    assert not plog.disk.full
    with pytest.raises(StorageError, match="Input/output error"):
        plog.stage_append(simple_batch(1), now_ms=1)
    plog.discard()


async def test_a_synchronous_write_that_fails_changes_no_producer_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync "never": the write happens in stage_append; a failed one leaves no trace, so the
    idempotent producer's retry is not taken for out of order."""
    plog = open_log(tmp_path, fsync="never")
    batch = simple_batch(2, producer_id=3, producer_epoch=0, base_sequence=0)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("streamd.log.segment.os.write", full)
    with pytest.raises(StorageError):
        plog.stage_append(batch, now_ms=1)
    monkeypatch.undo()
    monkeypatch.setattr(plog.disk, "refresh", lambda: True)
    plog.disk.full = False
    result = await plog.append(batch, now_ms=1)
    assert result.base_offset == 0 and plog.log_end_offset == 2
    await plog.close()


async def test_a_standalone_partition_commits_through_the_shared_flusher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One group-commit path: a partition opened without a log manager gets a flusher too."""
    rounds: list[int] = []
    real = flusher_mod.run_flush_jobs

    def counting(jobs, fs_sync=None):  # noqa: ANN001, ANN202
        rounds.append(len(jobs))
        return real(jobs, fs_sync)

    monkeypatch.setattr(flusher_mod, "run_flush_jobs", counting)
    plog = PartitionLog.open(tmp_path, config(), fsync=FsyncPolicy.parse("always"))
    assert isinstance(plog.flusher, SharedFlusher)
    await asyncio.gather(*(plog.append(simple_batch(1), now_ms=1) for _ in range(4)))
    assert rounds and sum(rounds) <= 4
    assert not hasattr(plog, "_flush_once")
    await plog.close()


def test_truncate_to_matches_a_segment_that_never_had_the_tail(tmp_path: Path) -> None:
    from streamd.log.batch import patch_for_append
    from streamd.log.segment import Segment

    def build(directory: Path, batches: list[bytes]) -> Segment:
        directory.mkdir()
        seg = Segment(directory, 5, index_interval_bytes=150, created_ms=0)
        for data in batches:
            buf = bytearray(data)
            headers = patch_for_append(
                buf, validate_produce_batches(buf, 1 << 20), seg.next_offset, None
            )
            seg.append(buf, headers, now_ms=1)
        return seg

    batches = [simple_batch(1 + i % 3, ts=1000 - 7 * i, value_size=40) for i in range(12)]
    full = build(tmp_path / "a", batches)
    kept = build(tmp_path / "b", batches[:7])
    full.seal()
    full.truncate_to(kept.size)
    for attr in ("size", "next_offset", "max_timestamp", "first_timestamp", "last_batch_base",
                 "_bytes_since_index"):
        assert getattr(full, attr) == getattr(kept, attr), attr
    assert full.offset_index.entries() == kept.offset_index.entries()
    assert full.time_index.entries() == kept.time_index.entries()
    assert full.path.read_bytes() == kept.path.read_bytes()
    assert not full.sealed
    full.close()
    kept.close()
