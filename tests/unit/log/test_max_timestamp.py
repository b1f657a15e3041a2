"""ListOffsets -3 (KIP-734) at the log: the earliest visible record with the largest timestamp."""

from pathlib import Path

from .batches import build_batch
from .helpers import open_log


def batch(*timestamps: int) -> bytes:
    return build_batch([(b"k", b"v" * 200, [], ts) for ts in timestamps])


async def test_empty_log_has_no_max_timestamp(tmp_path: Path) -> None:
    plog = open_log(tmp_path / "p")
    assert plog.max_timestamp_offset() is None
    await plog.close()


async def test_offset_of_the_record_holding_the_max_not_its_batch(tmp_path: Path) -> None:
    plog = open_log(tmp_path / "p")
    await plog.append(batch(100, 200, 300), now_ms=1)  # offsets 0-2
    await plog.append(batch(400, 9_000, 500, 600), now_ms=1)  # 3-6: max at 4
    for _ in range(6):  # later segments with smaller timestamps
        await plog.append(batch(700, 800), now_ms=1)
    assert len(plog.segments) > 2
    assert plog.max_timestamp_offset() == (4, 9_000)
    await plog.close()


async def test_ties_go_to_the_earliest_offset_across_segments(tmp_path: Path) -> None:
    plog = open_log(tmp_path / "p")
    await plog.append(batch(10, 20), now_ms=1)
    await plog.append(batch(5_000, 30), now_ms=1)  # offset 2
    for _ in range(9):
        await plog.append(batch(40, 5_000, 50), now_ms=1)  # same max, later offsets
    assert len(plog.segments) > 2
    assert plog.max_timestamp_offset() == (2, 5_000)
    await plog.close()


async def test_records_below_the_log_start_do_not_count(tmp_path: Path) -> None:
    plog = open_log(tmp_path / "p")
    await plog.append(batch(9_000, 1), now_ms=1)  # 0-1
    await plog.append(batch(2, 3_000, 4), now_ms=1)  # 2-4
    plog.delete_records_before(2)
    assert plog.max_timestamp_offset() == (3, 3_000)
    await plog.close()


async def test_log_append_time_topics_answer_the_first_record(tmp_path: Path) -> None:
    plog = open_log(tmp_path / "p", message_timestamp_type="LogAppendTime")
    await plog.append(batch(1, 2), now_ms=5_000)
    await plog.append(batch(3, 4, 5), now_ms=7_000)  # offsets 2-4, all stamped 7000
    await plog.append(batch(6), now_ms=6_000)
    assert plog.max_timestamp_offset() == (2, 7_000)
    await plog.close()
