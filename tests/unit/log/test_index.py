from pathlib import Path

from streamd.log.index import OffsetIndex, TimeIndex


def test_offset_index_floor_lookup_and_reload(tmp_path: Path) -> None:
    idx = OffsetIndex(tmp_path / "x.index", 100)
    assert idx.lookup(150) == (100, 0)
    for off, pos in [(110, 4096), (130, 8200), (170, 12300)]:
        idx.append(off, pos)
    assert idx.lookup(109) == (100, 0)
    assert idx.lookup(110) == (110, 4096)
    assert idx.lookup(169) == (130, 8200)
    assert idx.lookup(10_000) == (170, 12300)
    idx.close()
    again = OffsetIndex.load(idx.path, 100, log_size=20_000, next_offset=200)
    assert again is not None and again.entries() == idx.entries()


def test_offset_index_inconsistent(tmp_path: Path) -> None:
    idx = OffsetIndex(tmp_path / "x.index", 0)
    idx.append(10, 5000)
    idx.close()
    assert OffsetIndex.load(idx.path, 0, log_size=4000, next_offset=None) is None
    assert OffsetIndex.load(idx.path, 0, log_size=9000, next_offset=10) is None
    with idx.path.open("ab") as f:
        f.write(b"\x00\x01\x02")
    assert OffsetIndex.load(idx.path, 0, log_size=9000, next_offset=None) is None
    assert OffsetIndex.load(tmp_path / "missing.index", 0, log_size=1, next_offset=None) is None


def test_time_index(tmp_path: Path) -> None:
    idx = TimeIndex(tmp_path / "x.timeindex", 50)
    idx.maybe_append(1000, 50)
    idx.maybe_append(1000, 60)
    idx.maybe_append(2000, 70)
    idx.maybe_append(3000, 80)
    assert idx.entries() == [(1000, 0), (2000, 20), (3000, 30)]
    assert idx.offset_before(500) == 50
    assert idx.offset_before(1000) == 50
    assert idx.offset_before(2000) == 50
    assert idx.offset_before(2001) == 70
    assert idx.offset_before(99_999) == 80
    idx.close()
    again = TimeIndex.load(idx.path, 50, next_offset=81)
    assert again is not None and again.entries() == idx.entries()
    assert TimeIndex.load(idx.path, 50, next_offset=80) is None
