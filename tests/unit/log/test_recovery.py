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


def _last_batch(path: Path) -> tuple[int, bytes]:
    """(position, bytes) of the last batch of a segment file."""
    from streamd.log.batch import HEADER_SIZE, parse_header

    data = path.read_bytes()
    pos = 0
    while True:
        header = parse_header(data[pos : pos + HEADER_SIZE])
        if pos + header.size >= len(data):
            return pos, data[pos:]
        pos += header.size


@pytest.mark.parametrize("shift", [0, -3, 5], ids=["repeats", "goes-back", "skips"])
async def test_a_valid_batch_at_the_wrong_offset_is_cut(
    tmp_path: Path, shift: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The CRC does not cover the base offset: a batch with a valid CRC but the wrong base
    offset (a replayed or misplaced write) is caught only by the dense-offset check."""
    import struct

    end, before = await _closed_log(tmp_path)
    seg = _last_segment(tmp_path)
    size = seg.stat().st_size
    _, last = _last_batch(seg)
    planted = bytearray(last)
    struct.pack_into(">q", planted, 0, end + shift if shift else struct.unpack_from(">q", last)[0])
    with seg.open("ab") as f:
        f.write(planted)
    with caplog.at_level(logging.WARNING, logger="streamd.log"):
        plog = open_log(tmp_path)
    assert seg.stat().st_size == size
    assert plog.log_end_offset == end
    assert read_all(plog, 0) == before
    assert any("has base offset" in r.getMessage() for r in caplog.records)
    await plog.close()


async def test_a_misplaced_batch_in_an_older_segment_drops_what_follows(tmp_path: Path) -> None:
    import struct

    await _closed_log(tmp_path, batches=20)
    (tmp_path / CLEAN_SHUTDOWN_MARKER).unlink()
    segs = sorted(tmp_path.glob("*.log"))
    position, last = _last_batch(segs[1])
    with segs[1].open("r+b") as f:  # its last batch now claims to start 7 offsets later
        f.seek(position)
        f.write(struct.pack(">q", struct.unpack_from(">q", last)[0] + 7))
    plog = open_log(tmp_path)
    assert len(plog.segments) == 2
    assert plog.log_end_offset == struct.unpack_from(">q", last)[0]
    batches = read_all(plog, 0)
    assert all(b[0] == a[1] + 1 for a, b in zip(batches, batches[1:], strict=False))
    await plog.close()


async def test_starting_needs_no_space_for_rebuilt_indexes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a kill -9 on a full disk, indexes to rebuild must not stop the start: a rebuilt
    index that cannot be written replaces nothing, the stale file is removed, and reads work."""
    import errno

    end, before = await _closed_log(tmp_path, batches=20)
    (tmp_path / CLEAN_SHUTDOWN_MARKER).unlink()
    for index in tmp_path.glob("*.index"):
        index.write_bytes(b"\xff" * 16)  # inconsistent with the log: to be rebuilt
    real = Path.write_bytes

    def full(self: Path, data: bytes) -> int:
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    plog = open_log(tmp_path)
    assert plog.log_end_offset == end and read_all(plog, 0) == before
    assert not list(tmp_path.glob("*.tmp"))
    assert all(i.read_bytes() != b"\xff" * 16 for i in tmp_path.glob("*.index"))
    assert plog.offset_for_timestamp(1000 + 10 * 15) == (45, 1150)
    monkeypatch.undo()
    await plog.append(simple_batch(1), now_ms=10_000)
    await plog.close()
