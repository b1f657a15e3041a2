"""The persisted log start offset of a partition: two checksummed slots, updated in place.

Retention and DeleteRecords persist a new log start before they delete anything below it.
Replacing a file (write a temporary file, rename) needs a free block, so on a full disk the
deletion that would free space could never start. This file is written once, when the
partition is created, and then only overwritten: a ``pwrite`` of 32 bytes into blocks the file
already owns, followed by ``fdatasync``, needs no new block on filesystems that overwrite in
place (ext4, xfs, tmpfs; not copy-on-write ones such as btrfs or ZFS).

Layout: two 32-byte slots ``magic "LSO1", sequence u64, offset i64, crc32 u32`` (padded). An
update writes the slot with the lower sequence, so a write torn by a crash damages only that
slot and the other still holds the previous value. Reading takes the valid slot with the
higher sequence. The text format of earlier versions (``"<offset>\\n"``) is still read.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from streamd.log.files import fsync_dir

FILE = "log-start-offset"
MAGIC = b"LSO1"
_SLOT = struct.Struct(">4sQq")
SLOT_SIZE = 32


def _encode(sequence: int, offset: int) -> bytes:
    body = _SLOT.pack(MAGIC, sequence, offset)
    return (body + struct.pack(">I", zlib.crc32(body))).ljust(SLOT_SIZE, b"\0")


def _slots(data: bytes) -> list[tuple[int, int]]:
    """Valid (sequence, offset) slots."""
    out = []
    for i in range(2):
        raw = data[i * SLOT_SIZE : i * SLOT_SIZE + _SLOT.size + 4]
        if len(raw) < _SLOT.size + 4 or raw[:4] != MAGIC:
            continue
        body, (crc,) = raw[: _SLOT.size], struct.unpack(">I", raw[_SLOT.size :])
        if zlib.crc32(body) == crc:
            _, sequence, offset = _SLOT.unpack(body)
            out.append((sequence, offset))
    return out


def read_log_start(directory: Path) -> int | None:
    """The persisted log start, or None when there is none (or it cannot be read)."""
    try:
        data = (directory / FILE).read_bytes()
    except FileNotFoundError:
        return None
    slots = _slots(data)
    if slots:
        return max(slots)[1]
    try:
        return int(data.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None


def write_log_start(directory: Path, offset: int) -> None:
    """Persist ``offset`` durably; in place once the file exists (see the module docstring)."""
    path = directory / FILE
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, _encode(1, offset) + _encode(0, offset), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(directory)
        return
    try:
        slots = {i: s for i in range(2) if (s := _slot_at(fd, i)) is not None}
        if not slots:
            target, sequence = 0, 1
        else:
            newest = max(slots, key=lambda i: slots[i][0])
            target, sequence = 1 - newest, slots[newest][0] + 1
        os.pwrite(fd, _encode(sequence, offset), target * SLOT_SIZE)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _slot_at(fd: int, index: int) -> tuple[int, int] | None:
    raw = os.pread(fd, SLOT_SIZE, index * SLOT_SIZE)
    found = _slots(raw.ljust(SLOT_SIZE, b"\0") + b"\0" * SLOT_SIZE) if raw else []
    return found[0] if found else None
