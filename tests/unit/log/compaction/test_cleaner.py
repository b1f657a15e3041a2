"""The cleaner end to end on a real partition directory: the pass runs in the cleaner process,
the swap happens in this event loop, and a reopened log (clean and crashed) reads the same."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from streamd.log.compaction.cleaner import CleanerSettings, LogCleaner
from streamd.log.manager import LogManager
from streamd.log.partition import PartitionLog

from .helpers import COMPACTED, latest, read_records, write


@pytest.fixture
async def cleaner(tmp_path: Path):  # type: ignore[no-untyped-def]
    logs = LogManager(tmp_path)
    logs.load()
    cleaner = LogCleaner(logs, CleanerSettings(map_bytes=1 << 20))
    yield cleaner
    await cleaner.stop()
    await logs.close()


def history(keys: int, versions: int, seed: int = 1) -> list[tuple[bytes, bytes | None]]:
    rng = random.Random(seed)
    rows: list[tuple[bytes, bytes | None]] = []
    for v in range(versions):
        order = list(range(keys))
        rng.shuffle(order)
        rows += [(b"key-%03d" % k, b"value-%03d-%03d-" % (k, v) + b"x" * 30) for k in order]
    return rows


def check_compacted(plog: PartitionLog, rows: list[tuple[bytes, bytes | None]]) -> list[int]:
    """Exactly one record per live key with its latest value, offsets increasing."""
    records = read_records(plog)
    offsets = [o for o, _, _ in records]
    assert offsets == sorted(set(offsets))
    keys = [k for _, k, _ in records]
    assert len(keys) == len(set(keys)), "one record per key"
    assert {k: v for _, k, v in records if v is not None} == latest(rows)
    return offsets


async def test_a_pass_keeps_the_latest_value_per_key_and_leaves_gaps(cleaner: LogCleaner) -> None:
    topic = cleaner.logs.create_topic("t", 1, COMPACTED)
    plog = topic.partitions[0]
    rows = history(20, 10)
    await write(plog, rows)
    plog.seal_active()
    before = plog.log_end_offset
    assert await cleaner.clean_once()
    offsets = check_compacted(plog, rows)
    assert len(offsets) == 20 and offsets[-1] == before - 1
    assert plog.log_end_offset == before, "the log end never moves"
    report = cleaner.status("t")[0]["last_cleaning"]  # type: ignore[index]
    assert report["error"] is None and report["bytes_written"] < report["bytes_read"]
    assert cleaner.status("t")[0]["dirty_ratio"] == 0.0  # type: ignore[index]
    await write(plog, [(b"key-000", b"new")])
    assert plog.log_end_offset == before + 1
    assert read_records(plog)[-1] == (before, b"key-000", b"new")


@pytest.mark.parametrize("codec", [None, "gzip", "lz4", "zstd", "snappy"])
async def test_compressed_batches_are_recompressed_with_their_codec(
    cleaner: LogCleaner, codec: str | None
) -> None:
    plog = cleaner.logs.create_topic("c", 1, COMPACTED).partitions[0]
    rows = history(15, 6)
    await write(plog, rows, per_batch=7, compression=codec)
    plog.seal_active()
    assert await cleaner.clean_once()
    check_compacted(plog, rows)


async def test_the_compacted_log_reads_the_same_after_a_restart_and_after_a_crash(
    tmp_path: Path, cleaner: LogCleaner
) -> None:
    plog = cleaner.logs.create_topic("r", 1, COMPACTED).partitions[0]
    rows = history(30, 8)
    await write(plog, rows)
    plog.seal_active()
    assert await cleaner.clean_once()
    expected = read_records(plog)
    end = plog.log_end_offset
    await cleaner.logs.close()
    for crashed in (False, True):
        directory = tmp_path / "topics" / "r" / "0"
        if crashed:
            (directory / "clean-shutdown").unlink()
        logs = LogManager(tmp_path)
        logs.load()
        reopened = logs.partition("r", 0)
        assert read_records(reopened) == expected
        assert reopened.log_end_offset == end
        await logs.close()


async def test_tombstones_go_after_delete_retention_ms(cleaner: LogCleaner) -> None:
    plog = cleaner.logs.create_topic("d", 1, COMPACTED).partitions[0]
    rows = history(10, 3) + [(b"key-%03d" % k, None) for k in range(4)]
    rows += [(b"other-%d" % i, b"x") for i in range(5)]
    await write(plog, rows)
    plog.seal_active()
    now = 50_000
    assert await cleaner.clean_once(now)
    tombstones = [k for _, k, v in read_records(plog) if v is None]
    assert len(tombstones) == 4, "kept for delete.retention.ms after the first cleaning"
    assert not await cleaner.clean_once(now + 999), "nothing due before the horizon"
    assert await cleaner.clean_once(now + 1_000)
    assert [k for _, k, v in read_records(plog) if v is None] == []
    check_compacted(plog, rows)


async def test_a_small_key_map_cleans_in_several_passes(tmp_path: Path) -> None:
    logs = LogManager(tmp_path)
    logs.load()
    cleaner = LogCleaner(logs, CleanerSettings(map_bytes=160 * 40))
    try:
        plog = logs.create_topic("m", 1, COMPACTED).partitions[0]
        rows = history(100, 4)
        await write(plog, rows)
        plog.seal_active()
        passes = 0
        while await cleaner.clean_once():
            passes += 1
            assert passes < 50
        assert passes > 2
        check_compacted(plog, rows)
        assert cleaner.status("m")[0]["last_cleaning"]["map_entries"] <= 40  # type: ignore[index]
    finally:
        await cleaner.stop()
        await logs.close()


async def test_cleaned_segments_end_where_the_next_begins_and_hold_records(
    cleaner: LogCleaner,
) -> None:
    """Archived segments must stay contiguous and librdkafka gives up on a run of answers
    without records: every cleaned segment's last batch ends at the next segment's base, and
    a group whose records are all gone is merged into the next one."""
    plog = cleaner.logs.create_topic("g", 1, COMPACTED).partitions[0]
    rows = [(b"early-%03d" % i, b"e" * 50) for i in range(30)] + history(30, 12)
    await write(plog, rows)
    plog.seal_active()
    assert await cleaner.clean_once()
    sealed = plog.segments[:-1]
    assert len(sealed) >= 2
    for segment, following in zip(sealed, plog.segments[1:], strict=False):
        headers = [h for _, h in segment.iter_headers()]
        assert headers[-1].next_offset == following.base_offset
        assert sum(h.records_count for h in headers) > 0
    check_compacted(plog, rows)
