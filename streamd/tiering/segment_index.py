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
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from streamd.errors import CorruptMessage, RemoteStorageError
from streamd.log.batch import HEADER_SIZE, LOG_OVERHEAD, PREFIX, check_batch
from streamd.tiering.checksum import crc32c

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


class _Scanner:
    """The state of one pass over a segment's batches, fed in pieces."""

    def __init__(self, base_offset: int, interval_bytes: int) -> None:
        self.interval = interval_bytes
        self.entries: list[tuple[int, int, int]] = []
        self.expected = base_offset
        self.records = 0
        self.first_ts = self.max_ts = -1
        self.entry_start = -interval_bytes

    def feed(self, data: bytes | memoryview, position: int, more: int) -> int:
        """Scan the whole batches in ``data`` (segment bytes from ``position``, with ``more``
        bytes of the segment after it); returns the bytes consumed. A batch cut off at the end
        of ``data`` is left for the next piece if the segment holds the rest of it."""
        end = len(data)
        pos = 0
        while pos < end:
            if more:
                if end - pos < HEADER_SIZE:
                    break
                batch_end = pos + LOG_OVERHEAD + PREFIX.unpack_from(data, pos)[1]
                if end < batch_end <= end + more:
                    break
            header = check_batch(data, pos, end)
            at = position + pos
            if header.base_offset != self.expected:
                raise CorruptMessage(
                    f"batch at byte {at} has base offset {header.base_offset}, "
                    f"expected {self.expected}"
                )
            if at - self.entry_start >= self.interval:
                self.entries.append((header.base_offset, at, header.max_timestamp))
                self.entry_start = at
            elif header.max_timestamp > self.entries[-1][2]:
                e = self.entries[-1]
                self.entries[-1] = (e[0], e[1], header.max_timestamp)
            if at == 0:
                self.first_ts = header.first_timestamp
            self.max_ts = max(self.max_ts, header.max_timestamp)
            self.records += header.records_count
            self.expected = header.next_offset
            pos += header.size
        return pos

    def result(self) -> SegmentScan:
        return SegmentScan(
            index=encode_index(self.entries),
            record_count=self.records,
            first_timestamp=self.first_ts,
            max_timestamp=self.max_ts,
            last_offset=self.expected - 1,
        )


def scan_segment(
    data: bytes | memoryview,
    base_offset: int,
    *,
    interval_bytes: int = DEFAULT_INTERVAL_BYTES,
) -> SegmentScan:
    """Validate the batches of a segment starting at ``base_offset``; build its index.

    Raises :class:`CorruptMessage` on a bad batch, a torn tail or non-dense offsets.
    """
    if len(data) == 0:
        raise CorruptMessage("empty segment")
    scanner = _Scanner(base_offset, interval_bytes)
    scanner.feed(data, 0, more=0)
    return scanner.result()


SCAN_BLOCK = 16 << 20


def scan_segment_file(
    fd: int,
    size: int,
    base_offset: int,
    *,
    interval_bytes: int = DEFAULT_INTERVAL_BYTES,
    block: int = SCAN_BLOCK,
) -> tuple[SegmentScan, str]:
    """:func:`scan_segment` of the first ``size`` bytes of file ``fd``, read in ``block``-sized
    pieces (memory stays bounded by a block plus one batch), and the CRC32C of those bytes."""
    if size == 0:
        raise CorruptMessage("empty segment")
    scanner = _Scanner(base_offset, interval_bytes)
    crc = 0
    pending = b""  # bytes of a batch cut by the previous block
    read = 0
    while read < size:
        data = os.pread(fd, min(block, size - read), read)
        if not data:
            raise CorruptMessage(f"segment ends at byte {read}, expected {size}")
        crc = crc32c(data, crc)
        position = read - len(pending)
        read += len(data)
        piece = pending + data if pending else data
        used = scanner.feed(piece, position, more=size - read)
        pending = piece[used:]
    return scanner.result(), format(crc, "08x")


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
