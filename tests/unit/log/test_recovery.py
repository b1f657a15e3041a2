import logging
import os
from pathlib import Path

import pytest

from streamd.log.recovery import CLEAN_SHUTDOWN_MARKER

from .batches import simple_batch
from .helpers import fill, open_log, read_all


async def _closed_log(path: Path, batches: int = 10) -> tuple[int, list[tuple[int, int]]]:
    plog = open_log(path)
    await fill(plog, batches)
    end, batches_read = plog.log_end_offset, read_all(plog, 0)
    await plog.close()
    return end, batches_read


def _last_segment(path: Path) -> Path:
    return sorted(path.glob("*.log"))[-1]


async def test_clean_reopen_keeps_everything(tmp_path: Path) -> None:
    end, before = await _closed_log(tmp_path)
    assert (tmp_path / CLEAN_SHUTDOWN_MARKER).exists()
    plog = open_log(tmp_path)
    assert not (tmp_path / CLEAN_SHUTDOWN_MARKER).exists()
    assert len(plog.segments) > 1
    assert plog.log_end_offset == end == 30
    assert read_all(plog, 0) == before
    await fill(plog, 1)
    assert plog.log_end_offset == 33
    await plog.close()


async def test_garbage_appended_is_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    end, before = await _closed_log(tmp_path)
    (tmp_path / CLEAN_SHUTDOWN_MARKER).unlink()
    seg = _last_segment(tmp_path)
    size = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(os.urandom(100))
    with caplog.at_level(logging.WARNING, logger="streamd.log"):
        plog = open_log(tmp_path)
    assert seg.stat().st_size == size
    assert any(
        "cutting 100 bytes" in r.getMessage() and seg.name in r.getMessage() for r in caplog.records
    )
    assert plog.log_end_offset == end
    assert read_all(plog, 0) == before
    await plog.close()


@pytest.mark.parametrize("cut", [1, 30, 61, 200])
async def test_torn_tail_truncates_to_last_valid_batch(tmp_path: Path, cut: int) -> None:
    end, before = await _closed_log(tmp_path)
    seg = _last_segment(tmp_path)
    os.truncate(seg, seg.stat().st_size - cut)
    plog = open_log(tmp_path)
    assert plog.log_end_offset == end - 3
    assert read_all(plog, 0) == before[:-1]
    result = await plog.append(simple_batch(2), now_ms=10_000)
    assert result.base_offset == end - 3
    await plog.close()


async def test_corrupt_byte_in_last_batch(tmp_path: Path) -> None:
    end, before = await _closed_log(tmp_path)
    seg = _last_segment(tmp_path)
    with seg.open("r+b") as f:
        f.seek(seg.stat().st_size - 5)
        f.write(b"\xff\xfe")
    plog = open_log(tmp_path)
    assert plog.log_end_offset == end - 3
    await plog.close()


async def test_missing_and_corrupt_indexes_are_rebuilt(tmp_path: Path) -> None:
    end, before = await _closed_log(tmp_path, batches=20)
    segs = sorted(tmp_path.glob("*.log"))
    first_index = segs[0].with_suffix(".index")
    good = first_index.read_bytes()
    assert good
    first_index.unlink()
    segs[1].with_suffix(".timeindex").write_bytes(b"\x01\x02\x03")
    segs[-1].with_suffix(".index").write_bytes(b"\xff" * 16)
    plog = open_log(tmp_path)
    assert first_index.read_bytes() == good
    assert len(segs[1].with_suffix(".timeindex").read_bytes()) % 12 == 0
    assert read_all(plog, 0) == before
    assert [plog.read(o, 1).read_bytes()[:8] for o in (0, 31, end - 1)]  # type: ignore[union-attr]
    assert plog.offset_for_timestamp(1000 + 10 * 15) == (45, 1150)
    await plog.close()


async def test_corruption_in_older_segment_drops_later_ones(tmp_path: Path) -> None:
    await _closed_log(tmp_path, batches=20)
    (tmp_path / CLEAN_SHUTDOWN_MARKER).unlink()
    segs = sorted(tmp_path.glob("*.log"))
    assert len(segs) >= 3
    with segs[1].open("r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 8)
    plog = open_log(tmp_path)
    assert len(plog.segments) == 2
    batches = read_all(plog, 0)
    assert batches[-1][1] + 1 == plog.log_end_offset
    assert all(b[0] == a[1] + 1 for a, b in zip(batches, batches[1:], strict=False))
    await plog.append(simple_batch(1), now_ms=10_000)
    await plog.close()
