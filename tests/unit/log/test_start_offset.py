"""The persisted log start: in place, torn-write safe, and readable in the old format."""

from __future__ import annotations

import os
from pathlib import Path

from streamd.log.start_offset import FILE, SLOT_SIZE, read_log_start, write_log_start


def test_updates_rewrite_the_file_in_place(tmp_path: Path) -> None:
    write_log_start(tmp_path, 5)
    before = os.stat(tmp_path / FILE)
    for offset in (7, 9, 12):
        write_log_start(tmp_path, offset)
        assert read_log_start(tmp_path) == offset
    after = os.stat(tmp_path / FILE)
    assert (after.st_ino, after.st_size, after.st_blocks) == (
        before.st_ino,
        before.st_size,
        before.st_blocks,
    )


def test_a_torn_update_leaves_the_previous_value(tmp_path: Path) -> None:
    write_log_start(tmp_path, 100)
    write_log_start(tmp_path, 200)
    data = bytearray((tmp_path / FILE).read_bytes())
    newest = 0 if read_slot(data, 0) == 200 else 1
    data[newest * SLOT_SIZE + 10] ^= 0xFF  # the update of 200 was torn by a crash
    (tmp_path / FILE).write_bytes(bytes(data))
    assert read_log_start(tmp_path) == 100
    write_log_start(tmp_path, 300)  # the damaged slot is the one written next
    assert read_log_start(tmp_path) == 300


def read_slot(data: bytearray, index: int) -> int:
    return int.from_bytes(data[index * SLOT_SIZE + 12 : index * SLOT_SIZE + 20], "big")


def test_the_text_format_of_earlier_versions_is_read_and_replaced(tmp_path: Path) -> None:
    (tmp_path / FILE).write_text("42\n")
    assert read_log_start(tmp_path) == 42
    write_log_start(tmp_path, 50)
    assert read_log_start(tmp_path) == 50


def test_missing_or_garbage_is_none(tmp_path: Path) -> None:
    assert read_log_start(tmp_path) is None
    (tmp_path / FILE).write_bytes(b"\xff" * 64)
    assert read_log_start(tmp_path) is None
