"""The index object uploaded next to every archived segment, and the scan that builds it.

A remote segment is the local ``.log`` file verbatim. Its index object lets a reader turn an
offset or a timestamp into a byte range without downloading the segment. Format (version 1,
big-endian)::

    b"SDRX" | u16 version | u32 entry count | entries: i64 base offset, u64 position, i64 max ts

Entry ``i`` covers the whole batches in ``[position_i, position_{i+1})`` (the last entry runs to
the end of the segment): ``base offset`` is the base offset of its first batch and ``max ts`` the
largest batch max timestamp inside the range. A new entry starts at the first batch boundary at
least ``interval_bytes`` after the previous one, so a lookup downloads at most about one interval
of bytes it does not need. The first record with timestamp >= T lies in the first range whose
``max ts`` >= T, which makes timestamp lookups exact without a time index.

The scan validates every batch (framing, CRC32C, dense offsets) before anything is uploaded, so
a segment damaged on local disk is never archived as if it were good.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from streamd.errors import CorruptMessage, RemoteStorageError
from streamd.log.batch import check_batch

MAGIC = b"SDRX"
VERSION = 1
_HEAD = struct.Struct(">4sHI")
_ENTRY = struct.Struct(">qQq")
DEFAULT_INTERVAL_BYTES = 32 * 1024


class IndexFormatError(RemoteStorageError):
    """An index object that does not parse."""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    base_offset: int
    position: int
    max_timestamp: int


@dataclass(frozen=True, slots=True)
class RemoteIndex:
    """Parsed index of one archived segment of ``size`` bytes."""

    entries: tuple[IndexEntry, ...]
    size: int

    def range_for_offset(self, offset: int) -> tuple[int, int]:
        """Byte range ``[start, end)`` of the entry whose batches hold ``offset``."""
        bases = [e.base_offset for e in self.entries]
        i = max(0, bisect.bisect_right(bases, offset) - 1)
        return self._range(i)

    def ranges_from_timestamp(self, timestamp: int) -> list[tuple[int, int]]:
        """Byte ranges, in offset order, that may hold a record with timestamp >= ``timestamp``."""
        return [self._range(i) for i, e in enumerate(self.entries) if e.max_timestamp >= timestamp]

    def _range(self, i: int) -> tuple[int, int]:
        start = self.entries[i].position
        end = self.entries[i + 1].position if i + 1 < len(self.entries) else self.size
        return start, end


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """What the uploader learns from one pass over a segment's bytes."""

    index: bytes
    record_count: int
    first_timestamp: int
    max_timestamp: int
    last_offset: int


def scan_segment(
    data: bytes | memoryview,
    base_offset: int,
    *,
    interval_bytes: int = DEFAULT_INTERVAL_BYTES,
) -> SegmentScan:
    """Validate the batches of a segment starting at ``base_offset``; build its index.

    Raises :class:`CorruptMessage` on a bad batch, a torn tail or non-dense offsets.
    """
    end = len(data)
    if end == 0:
        raise CorruptMessage("empty segment")
    entries: list[tuple[int, int, int]] = []
    pos = 0
    expected = base_offset
    records = 0
    first_ts = max_ts = -1
    entry_start = -interval_bytes
    while pos < end:
        header = check_batch(data, pos, end)
        if header.base_offset != expected:
            raise CorruptMessage(
                f"batch at byte {pos} has base offset {header.base_offset}, expected {expected}"
            )
        if pos - entry_start >= interval_bytes:
            entries.append((header.base_offset, pos, header.max_timestamp))
            entry_start = pos
        elif header.max_timestamp > entries[-1][2]:
            entries[-1] = (entries[-1][0], entries[-1][1], header.max_timestamp)
        if pos == 0:
            first_ts = header.first_timestamp
        max_ts = max(max_ts, header.max_timestamp)
        records += header.records_count
        expected = header.next_offset
        pos += header.size
    return SegmentScan(
        index=encode_index(entries),
        record_count=records,
        first_timestamp=first_ts,
        max_timestamp=max_ts,
        last_offset=expected - 1,
    )


def encode_index(entries: Sequence[tuple[int, int, int]]) -> bytes:
    return _HEAD.pack(MAGIC, VERSION, len(entries)) + b"".join(_ENTRY.pack(*e) for e in entries)


def decode_index(data: bytes, size: int) -> RemoteIndex:
    """Parse an index object of a segment of ``size`` bytes; raise :class:`IndexFormatError`."""
    if len(data) < _HEAD.size:
        raise IndexFormatError("index object is truncated")
    magic, version, count = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise IndexFormatError(f"index object has magic {magic!r} version {version}")
    if len(data) != _HEAD.size + count * _ENTRY.size or count == 0:
        raise IndexFormatError(f"index object length {len(data)} does not match {count} entries")
    entries = tuple(IndexEntry(*e) for e in _ENTRY.iter_unpack(data[_HEAD.size :]))
    if entries[0].position != 0 or any(
        a.position >= b.position or a.base_offset >= b.base_offset
        for a, b in zip(entries, entries[1:], strict=False)
    ):
        raise IndexFormatError("index entries are not strictly increasing from position 0")
    if entries[-1].position >= size:
        raise IndexFormatError("index entry points past the end of the segment")
    return RemoteIndex(entries, size)
