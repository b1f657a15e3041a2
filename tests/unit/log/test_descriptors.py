"""The segment-file descriptor cache: bounded, least recently used first, pins respected."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd.errors import StorageError
from streamd.log.descriptors import DESCRIPTORS
from streamd.log.segment import FileSlice, SegmentFile


@pytest.fixture
def limit_4() -> Iterator[None]:
    old = DESCRIPTORS.limit
    DESCRIPTORS.limit = 4
    yield
    DESCRIPTORS.limit = old


def files(tmp_path: Path, n: int) -> list[SegmentFile]:
    out = []
    for i in range(n):
        path = tmp_path / f"{i:020d}.log"
        path.write_bytes(b"%d" % i * 100)
        out.append(SegmentFile(path, create=False))
    return out


def open_count(segment_files: list[SegmentFile]) -> int:
    return sum(f.is_open for f in segment_files)


def test_at_most_limit_files_stay_open(tmp_path: Path, limit_4: None) -> None:
    many = files(tmp_path, 20)
    for f in many:
        assert f.pread(3, 0) == f.path.read_bytes()[:3]
        assert open_count(many) <= 4
    assert [f.is_open for f in many[-4:]] == [True] * 4, "the most recently used stay"
    assert many[0].pread(2, 10) == many[0].path.read_bytes()[10:12], "reopened on demand"
    for f in many:
        f.close()
    assert open_count(many) == 0


def test_pinned_files_are_never_closed(tmp_path: Path, limit_4: None) -> None:
    many = files(tmp_path, 10)
    fd = many[0].pin()
    for f in many[1:]:
        f.pread(1, 0)
    assert many[0].is_open and many[0].pinned_fd == fd
    assert os.pread(fd, 1, 0) == b"0"
    many[0].close()  # retired while pinned: closes at the last unpin
    assert many[0].is_open
    many[0].unpin()
    assert not many[0].is_open
    with pytest.raises(StorageError):
        many[0].pread(1, 0)
    for f in many:
        f.close()


def test_a_deleted_file_stays_readable_through_a_slice(tmp_path: Path, limit_4: None) -> None:
    (file,) = files(tmp_path, 1)
    piece = FileSlice(file, 0, 50)
    file.pread(1, 0)
    file.path.unlink()
    file.unlinked()
    (tmp_path / "x").mkdir()
    others = files(tmp_path / "x", 8)
    for f in others:
        f.pread(1, 0)
    assert piece.read_bytes() == b"0" * 50
    for f in others:
        f.close()


def test_deleting_closes_the_file_unless_a_slice_still_reads_it(tmp_path: Path) -> None:
    """Space must come back when a segment is deleted (a full disk waits for it), so the
    descriptor is closed at once; only a live slice keeps it open, until it is gone."""
    first, second = files(tmp_path, 2)
    first.pread(1, 0)
    second.pread(1, 0)
    piece = FileSlice(second, 0, 10)
    for f in (first, second):
        f.path.unlink()
        f.unlinked()
    assert not first.is_open
    assert second.is_open and piece.read_bytes() == b"1" * 10
    del piece
    assert not second.is_open
