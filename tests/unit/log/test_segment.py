from pathlib import Path

from streamd.log.batch import parse_header, patch_for_append, validate_produce_batches
from streamd.log.segment import Segment, SegmentFile

from .batches import simple_batch


def _segment_with(tmp_path: Path, sizes: list[int], interval: int = 0) -> Segment:
    seg = Segment(tmp_path, 10, index_interval_bytes=interval, created_ms=0)
    for i, n in enumerate(sizes):
        buf = bytearray(simple_batch(n, ts=1000 * (i + 1), value_size=100))
        headers = patch_for_append(
            buf, validate_produce_batches(buf, 1 << 20), seg.next_offset, None
        )
        seg.append(buf, headers, now_ms=5)
    return seg


def test_append_find_and_read(tmp_path: Path) -> None:
    seg = _segment_with(tmp_path, [2, 3, 1, 4])
    assert seg.base_offset == 10 and seg.next_offset == 20
    assert seg.path.stat().st_size == seg.size
    assert seg.path.name == "00000000000000000010.log"
    assert len(seg.offset_index) == 4
    positions = [pos for pos, _ in seg.iter_headers()]
    assert seg.find_position(10) == (positions[0], 10)
    assert seg.find_position(13) == (positions[1], 12)
    assert seg.find_position(15) == (positions[2], 15)
    assert seg.find_position(19) == (positions[3], 16)
    assert seg.find_position(20) is None and seg.find_position(9) is None
    whole = seg.read(positions[1], 1 << 20)
    assert whole is not None and whole.length == seg.size - positions[1]
    data = whole.read_bytes()
    assert [h.base_offset for h in validate_produce_batches(data, 1 << 20)] == [12, 15, 16]
    assert seg.max_timestamp == 4003 and seg.first_timestamp == 1000
    seg.close()


def test_read_respects_max_bytes_and_min_one(tmp_path: Path) -> None:
    seg = _segment_with(tmp_path, [3, 3, 3])
    first = parse_header(seg.file.pread(61, 0))
    one = seg.read(0, first.size + 10)
    assert one is not None and one.length == first.size
    assert seg.read(0, 5, min_one=False) is None
    forced = seg.read(0, 5, min_one=True)
    assert forced is not None and forced.length == first.size
    limited = seg.read(0, 1 << 20, end_offset=16)
    assert limited is not None and limited.length == 2 * first.size
    seg.close()


def test_slice_survives_deletion(tmp_path: Path) -> None:
    seg = _segment_with(tmp_path, [2])
    piece = seg.read(0, 1 << 20)
    assert piece is not None
    seg.seal()
    seg.delete()
    assert not seg.path.exists()
    assert len(piece.read_bytes()) == piece.length


def test_offset_for_timestamp_in_segment(tmp_path: Path) -> None:
    seg = _segment_with(tmp_path, [2, 2, 2])
    assert seg.offset_for_timestamp(0, 0, 100) == (10, 1000)
    assert seg.offset_for_timestamp(1001, 0, 100) == (11, 1001)
    assert seg.offset_for_timestamp(1002, 0, 100) == (12, 2000)
    assert seg.offset_for_timestamp(3001, 0, 100) == (15, 3001)
    assert seg.offset_for_timestamp(3002, 0, 100) is None
    assert seg.offset_for_timestamp(0, 13, 100) == (13, 2001)
    seg.close()


def test_indexed_read_matches_a_full_header_scan(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    seg = _segment_with(tmp_path, [1, 3, 2, 5, 1, 4, 2, 2, 3, 1, 6, 1], interval=700)
    spans = list(seg.iter_headers())
    assert len(seg.offset_index) >= 3, "the test needs a sparse index"

    def scanned(start: int, max_bytes: int, min_one: bool, end_offset: int | None) -> int:
        end = start
        for pos, header in spans:
            if pos < start:
                continue
            if end_offset is not None and header.base_offset >= end_offset:
                break
            if pos + header.size - start > max_bytes and not (pos == start and min_one):
                break
            end = pos + header.size
        return end - start

    preads = 0
    real_pread = SegmentFile.pread

    def counting(self: SegmentFile, length: int, position: int) -> bytes:
        nonlocal preads
        preads += 1
        return real_pread(self, length, position)

    monkeypatch.setattr(SegmentFile, "pread", counting)
    for start, _ in spans[:5]:
        for max_bytes in (1, 300, 1000, 2500, seg.size):
            for end_offset in (None, 14, 25, seg.next_offset):
                for min_one in (True, False):
                    got = seg.read(start, max_bytes, min_one, end_offset=end_offset)
                    assert (got.length if got else 0) == scanned(
                        start, max_bytes, min_one, end_offset
                    ), (start, max_bytes, end_offset, min_one)
    preads = 0
    whole = seg.read(0, seg.size)
    assert whole is not None and whole.length == seg.size
    assert preads < len(spans) - 2, f"{preads} header reads for {len(spans)} batches"
    seg.close()
