import asyncio
from pathlib import Path
from typing import Any

import pytest

import streamd.log.flusher as flusher_mod
from streamd.log.fsync import FsyncPolicy
from streamd.log.manager import LogManager
from tests.unit.log.batches import simple_batch


def open_logs(tmp_path: Path, **options: Any) -> LogManager:
    """A loaded log manager with fsync "always" (plus ``options``)."""
    logs = LogManager(tmp_path, fsync=FsyncPolicy.parse("always"), **options)
    logs.load()
    return logs


async def fill_4mb(plog: Any) -> None:
    for _ in range(40):
        await plog.append(simple_batch(100, value_size=1000), now_ms=1)


async def test_concurrent_appends_on_many_partitions_share_flush_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds: list[int] = []
    real = flusher_mod.run_flush_jobs

    def counting(jobs, fs_sync=None):  # noqa: ANN001, ANN202
        rounds.append(len(jobs))
        return real(jobs, fs_sync)

    monkeypatch.setattr(flusher_mod, "run_flush_jobs", counting)
    logs = open_logs(tmp_path)
    topic = logs.create_topic("t", 8, {})
    results = await asyncio.gather(
        *(p.append(simple_batch(2), now_ms=1) for p in topic.partitions for _ in range(3))
    )
    assert all(r.base_offset in (0, 2, 4) for r in results)
    assert all(p.high_watermark == 6 for p in topic.partitions)
    assert sum(rounds) >= 8 and len(rounds) <= 3, rounds
    assert max(rounds) == 8
    await logs.close()


async def test_failed_partition_does_not_fail_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = open_logs(tmp_path)
    topic = logs.create_topic("t", 2, {})
    bad, good = topic.partitions
    real_fsync_all = flusher_mod._fsync_all

    def failing(files, directory, keep):  # noqa: ANN001, ANN202
        if any(f is bad.active.file for f in files):
            raise OSError(5, "injected EIO")
        return real_fsync_all(files, directory, keep)

    monkeypatch.setattr(flusher_mod, "_fsync_all", failing)
    outcome = await asyncio.gather(
        bad.append(simple_batch(1), now_ms=1),
        good.append(simple_batch(1), now_ms=1),
        return_exceptions=True,
    )
    assert isinstance(outcome[0], Exception) and "injected EIO" in str(outcome[0])
    assert not isinstance(outcome[1], Exception) and good.high_watermark == 1
    assert bad.high_watermark == 0
    monkeypatch.setattr(flusher_mod, "_fsync_all", real_fsync_all)
    await good.close()


async def test_an_unexpected_flush_error_fails_the_waiters_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(jobs, fs_sync=None):  # noqa: ANN001, ANN202
        raise RuntimeError("injected bug")

    monkeypatch.setattr(flusher_mod, "run_flush_jobs", broken)
    logs = open_logs(tmp_path)
    topic = logs.create_topic("t", 2, {})
    outcome = await asyncio.wait_for(
        asyncio.gather(
            *(p.append(simple_batch(1), now_ms=1) for p in topic.partitions), return_exceptions=True
        ),
        timeout=10,
    )
    assert all(isinstance(o, Exception) and "injected bug" in str(o) for o in outcome), outcome
    assert all(p.high_watermark == 0 for p in topic.partitions)
    for p in topic.partitions:
        p.discard()


async def test_synced_pages_behind_the_window_leave_the_page_cache(tmp_path: Path) -> None:
    logs = open_logs(tmp_path, page_cache_window=1 << 20)
    plog = logs.create_topic("t", 1, {}).partitions[0]
    await fill_4mb(plog)
    size = plog.active.size
    assert size > 3 << 20
    file = plog.active.file
    assert file.uncached_below == (size - (1 << 20)) & ~((1 << 20) - 1)
    piece = plog.read(0, 1 << 20)
    assert piece is not None and piece.read_bytes()[:8] == bytes(8)  # still read from the file
    await logs.close()


async def test_a_reopened_log_treats_all_but_its_newest_bytes_as_cold(tmp_path: Path) -> None:
    logs = open_logs(tmp_path)
    plog = logs.create_topic("t", 1, {}).partitions[0]
    await fill_4mb(plog)
    size = plog.active.size
    await logs.close()
    logs = open_logs(tmp_path, page_cache_window=1 << 20)
    assert logs.partition("t", 0).active.file.uncached_below == size - (1 << 20)
    await logs.close()


async def test_a_negative_window_leaves_caching_to_the_os(tmp_path: Path) -> None:
    logs = open_logs(tmp_path)
    plog = logs.create_topic("t", 1, {}).partitions[0]
    await fill_4mb(plog)
    assert plog.active.file.uncached_below == 0
    await logs.close()


async def test_index_entries_are_written_in_blocks_and_all_on_close(tmp_path: Path) -> None:
    from streamd.log.index import OffsetIndex

    logs = open_logs(tmp_path)
    plog = logs.create_topic("t", 1, {"index.interval.bytes": "1"}).partitions[0]
    for _ in range(30):
        await plog.append(simple_batch(2, value_size=10), now_ms=1)
    segment = plog.active
    index_path = segment.offset_index.path
    entries = segment.offset_index.entries()
    assert len(entries) == 29  # every batch but the first is indexed
    on_disk = index_path.stat().st_size if index_path.exists() else 0
    assert on_disk < len(entries) * OffsetIndex.ENTRY.size, "buffered, not one write per entry"
    base = segment.base_offset
    size = segment.size
    await logs.close()
    reloaded = OffsetIndex.load(index_path, base, log_size=size, next_offset=60)
    assert reloaded is not None and reloaded.entries() == entries
