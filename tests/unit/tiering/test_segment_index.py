"""The index object of an archived segment, and the scan that validates a segment."""

from __future__ import annotations

import os

import pytest

from streamd.errors import CorruptMessage
from streamd.tiering.segment_index import IndexFormatError, decode_index, scan_segment
from tests.unit.log.batches import simple_batch


def segment_bytes(batches: int, records: int = 3, base: int = 0) -> bytes:
    out = bytearray()
    offset = base
    for i in range(batches):
        batch = bytearray(simple_batch(records, ts=1000 + 100 * i, value_size=200))
        batch[0:8] = offset.to_bytes(8, "big")
        out += batch
        offset += records
    return bytes(out)


def test_scan_counts_records_timestamps_and_indexes_every_interval() -> None:
    data = segment_bytes(20, base=50)
    scan = scan_segment(data, 50, interval_bytes=2000)
    assert scan.record_count == 60 and scan.last_offset == 109
    assert scan.first_timestamp == 1000 and scan.max_timestamp == 1000 + 1900 + 2
    index = decode_index(scan.index, len(data))
    assert 1 < len(index.entries) < 20 and index.entries[0].position == 0
    for offset in range(50, 110):
        start, end = index.range_for_offset(offset)
        found = [e for e in index.entries if e.position == start][0]
        assert found.base_offset <= offset


def test_timestamp_ranges_start_at_the_first_range_that_can_match() -> None:
    data = segment_bytes(20)
    index = decode_index(scan_segment(data, 0, interval_bytes=1500).index, len(data))
    ranges = index.ranges_from_timestamp(2000)
    first = ranges[0][0]
    assert all(e.max_timestamp >= 2000 for e in index.entries if e.position >= first)
    assert index.ranges_from_timestamp(10**12) == []


def test_scan_rejects_corrupt_and_non_dense_segments() -> None:
    data = bytearray(segment_bytes(3))
    data[-5] ^= 0xFF
    with pytest.raises(CorruptMessage):
        scan_segment(bytes(data), 0)
    with pytest.raises(CorruptMessage):
        scan_segment(segment_bytes(3), 7)
    with pytest.raises(CorruptMessage):
        scan_segment(segment_bytes(3)[:-10], 0)


def test_decode_rejects_garbage() -> None:
    data = segment_bytes(3)
    good = scan_segment(data, 0).index
    for bad in (b"", b"XXXX" + good[4:], good[:-1]):
        with pytest.raises(IndexFormatError):
            decode_index(bad, len(data))
    with pytest.raises(IndexFormatError):
        decode_index(good, 0)


@pytest.mark.parametrize("block", [61, 100, 777, 4096, 1 << 20])
def test_scanning_a_file_in_blocks_matches_scanning_it_whole(tmp_path, block: int) -> None:  # noqa: ANN001
    from streamd.tiering.checksum import crc32c_hex
    from streamd.tiering.segment_index import scan_segment_file

    data = segment_bytes(40)
    path = tmp_path / "seg.log"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        scan, checksum = scan_segment_file(fd, len(data), 0, interval_bytes=700, block=block)
        assert scan == scan_segment(data, 0, interval_bytes=700)
        assert checksum == crc32c_hex(data)
        with pytest.raises(CorruptMessage):
            scan_segment_file(fd, len(data) - 10, 0, block=block)  # a torn tail
        with pytest.raises(CorruptMessage):
            scan_segment_file(fd, len(data), 3, block=block)  # offsets that do not start at 3
    finally:
        os.close(fd)


def test_a_garbage_length_does_not_make_the_file_scan_buffer_the_segment(tmp_path) -> None:  # noqa: ANN001
    from streamd.tiering.segment_index import scan_segment_file

    data = bytearray(segment_bytes(10))
    data[8:12] = (10**9).to_bytes(4, "big")  # first batch claims a gigabyte
    path = tmp_path / "seg.log"
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(CorruptMessage):
            scan_segment_file(fd, len(data), 0, block=100)
    finally:
        os.close(fd)
