"""The index object uploaded next to every archived object, and the scan that builds it.

A remote segment object is one local ``.log`` file verbatim, or several adjacent ones
concatenated (adjacent segment merging, see :mod:`streamd.tiering.uploader`). Its index object
lets a reader turn an offset or a timestamp into a byte range without downloading the object,
and carries the checksums every ranged read is verified against. Format (version 2,
big-endian)::

    b"SDRX" | u16 version | u32 entry count | u32 block size | u32 block count
    entries: i64 base offset, u64 position, i64 max ts
    block checksums: u32 CRC32C of bytes [i * block size, (i + 1) * block size)

Entry ``i`` covers the whole batches in ``[position_i, position_{i+1})`` (the last entry runs to
the end of the object): ``base offset`` is the base offset of its first batch and ``max ts`` the
largest batch max timestamp inside the range. A new entry starts at the first batch boundary at
least ``interval_bytes`` after the previous one, so a lookup downloads at most about one interval
of bytes it does not need. The first record with timestamp >= T lies in the first range whose
``max ts`` >= T, which makes timestamp lookups exact without a time index.

Integrity (invariant 10): a batch's own CRC32C does not cover its base offset or length, so a
flipped bit there would hand a client records under the wrong offsets. Every byte of the object
is therefore covered by a block checksum (``BLOCK_SIZE`` = 64 KiB blocks, the last one shorter);
the remote reader checks the blocks of every range it loads before anything is served, and the
index object itself is checked against the ``index_checksum`` in the manifest. Version 1 index
objects (no block checksums) are still read: their segments are verified against the
whole-object checksum in the manifest instead (see :mod:`streamd.tiering.remote_reader`).

The scan validates every batch (framing, CRC32C, dense offsets, also across the files of a
merged object; increasing offsets for segments the log cleaner rewrote) before anything is
uploaded, so a segment damaged on local disk is never
archived as if it were good.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from streamd.errors import CorruptMessage, RemoteStorageError
from streamd.log.batch import HEADER_SIZE, LOG_OVERHEAD, PREFIX, check_batch
from streamd.tiering.checksum import ChecksumMismatch, crc32c

MAGIC = b"SDRX"
VERSION = 2
VERSIONS = (1, 2)
_HEAD = struct.Struct(">4sHI")
_BLOCKS = struct.Struct(">II")
_ENTRY = struct.Struct(">qQq")
_CRC = struct.Struct(">I")
DEFAULT_INTERVAL_BYTES = 32 * 1024
BLOCK_SIZE = 64 * 1024


class IndexFormatError(RemoteStorageError):
    """An index object that does not parse."""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    base_offset: int
    position: int
    max_timestamp: int


@dataclass(frozen=True, slots=True)
class RemoteIndex:
    """Parsed index of one archived object of ``size`` bytes.

    ``block_crcs`` holds the CRC32C of every ``block_size`` bytes of the object (``None`` for a
    version 1 index, which has none)."""

    entries: tuple[IndexEntry, ...]
    size: int
    block_size: int = BLOCK_SIZE
    block_crcs: tuple[int, ...] | None = None

    def lookup(self, offset: int) -> tuple[int, int, int]:
        """``(start, end, base)``: the byte range of the entry whose batches hold ``offset``,
        and the base offset the batch at ``start`` must have."""
        i = max(0, bisect.bisect_right(self.entries, offset, key=lambda e: e.base_offset) - 1)
        start, end = self._range(i)
        return start, end, self.entries[i].base_offset

    def range_for_offset(self, offset: int) -> tuple[int, int]:
        """Byte range ``[start, end)`` of the entry whose batches hold ``offset``."""
        start, end, _ = self.lookup(offset)
        return start, end

    def ranges_from_timestamp(self, timestamp: int) -> list[tuple[int, int]]:
        """Byte ranges, in offset order, that may hold a record with timestamp >= ``timestamp``."""
        return [self._range(i) for i, e in enumerate(self.entries) if e.max_timestamp >= timestamp]

    def covering_blocks(self, start: int, end: int) -> tuple[int, int]:
        """The smallest block-aligned range holding ``[start, end)`` (clipped to the object)."""
        bs = self.block_size
        return start // bs * bs, min(self.size, -(-end // bs) * bs)

    def verify(self, data: bytes | memoryview, start: int, *, what: str) -> None:
        """Check ``data`` (object bytes from the block-aligned ``start``, ending on a block
        boundary or at the end of the object) against the block checksums."""
        if self.block_crcs is None:
            raise ValueError("a version 1 index has no block checksums")
        bs = self.block_size
        if start % bs or (len(data) % bs and start + len(data) != self.size):
            raise ValueError(f"range [{start}, {start + len(data)}) is not block-aligned")
        view = memoryview(data)
        first = start // bs
        for i in range(0, len(view), bs):
            expected = self.block_crcs[first + i // bs]
            if crc32c(view[i : i + bs]) != expected:
                raise ChecksumMismatch(
                    f"{what}: bytes [{start + i}, {min(start + i + bs, self.size)}) do not match "
                    f"their checksum in the index object"
                )

    def _range(self, i: int) -> tuple[int, int]:
        start = self.entries[i].position
        end = self.entries[i + 1].position if i + 1 < len(self.entries) else self.size
        return start, end


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """What the uploader learns from one pass over an object's bytes."""

    index: bytes
    record_count: int
    first_timestamp: int
    max_timestamp: int
    last_offset: int


class _Blocks:
    """CRC32C of every ``size`` bytes of a stream fed in arbitrary pieces."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.crcs: list[int] = []
        self._crc = 0
        self._filled = 0

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(self.size - self._filled, len(view))
            self._crc = crc32c(view[:take], self._crc)
            self._filled += take
            view = view[take:]
            if self._filled == self.size:
                self.crcs.append(self._crc)
                self._crc = self._filled = 0

    def finish(self) -> list[int]:
        if self._filled:
            self.crcs.append(self._crc)
            self._crc = self._filled = 0
        return self.crcs


class _Scanner:
    """The state of one pass over an object's batches, fed in pieces."""

    def __init__(
        self, base_offset: int, interval_bytes: int, block_size: int, gaps: bool = False
    ) -> None:
        self.gaps = gaps
        self.interval = interval_bytes
        self.entries: list[tuple[int, int, int]] = []
        self.expected = base_offset
        self.records = 0
        self.first_ts = self.max_ts = -1
        self.entry_start = -interval_bytes
        self.blocks = _Blocks(block_size)

    def feed(self, data: bytes | memoryview, position: int, more: int) -> int:
        """Scan the whole batches in ``data`` (object bytes from ``position``, with ``more``
        bytes of the same file after it); returns the bytes consumed. A batch cut off at the
        end of ``data`` is left for the next piece if the file holds the rest of it."""
        end = len(data)
        pos = 0
        while pos < end:
            if more:
                if end - pos < HEADER_SIZE:
                    break
                batch_end = pos + LOG_OVERHEAD + PREFIX.unpack_from(data, pos)[1]
                if end < batch_end <= end + more:
                    break
            header = check_batch(data, pos, end, compacted=self.gaps)
            at = position + pos
            if header.base_offset != self.expected and not (
                self.gaps and header.base_offset > self.expected
            ):
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
            index=encode_index(self.entries, self.blocks.finish(), self.blocks.size),
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
    block_size: int = BLOCK_SIZE,
) -> SegmentScan:
    """Validate the batches of a segment starting at ``base_offset``; build its index.

    Raises :class:`CorruptMessage` on a bad batch, a torn tail or non-dense offsets.
    """
    if len(data) == 0:
        raise CorruptMessage("empty segment")
    scanner = _Scanner(base_offset, interval_bytes, block_size)
    scanner.feed(data, 0, more=0)
    scanner.blocks.feed(data)
    return scanner.result()


SCAN_BLOCK = 16 << 20


def scan_segment_file(
    fd: int,
    size: int,
    base_offset: int,
    *,
    interval_bytes: int = DEFAULT_INTERVAL_BYTES,
    block: int = SCAN_BLOCK,
    block_size: int = BLOCK_SIZE,
) -> tuple[SegmentScan, str]:
    """:func:`scan_segment` of the first ``size`` bytes of file ``fd``, read in ``block``-sized
    pieces (memory stays bounded by a block plus one batch), and the CRC32C of those bytes."""
    return scan_files(
        [(fd, size)], base_offset, interval_bytes=interval_bytes, block=block,
        block_size=block_size,
    )


def scan_files(
    files: Sequence[tuple[int, int]],
    base_offset: int,
    *,
    interval_bytes: int = DEFAULT_INTERVAL_BYTES,
    block: int = SCAN_BLOCK,
    block_size: int = BLOCK_SIZE,
    gaps: bool = False,
) -> tuple[SegmentScan, str]:
    """Scan the object made of the first ``size`` bytes of each ``(fd, size)`` in turn (adjacent
    segments, merged): offsets must run densely from ``base_offset`` across the files (with
    ``gaps``, segments the log cleaner rewrote: only increase, and a batch may hold fewer
    records than offsets), and no batch may span two files. Returns the scan and the CRC32C of
    the whole object."""
    if not files or any(size <= 0 for _, size in files):
        raise CorruptMessage("empty segment")
    scanner = _Scanner(base_offset, interval_bytes, block_size, gaps)
    crc = 0
    origin = 0  # object position of the current file's first byte
    for fd, size in files:
        pending = b""  # bytes of a batch cut by the previous block
        read = 0
        while read < size:
            data = os.pread(fd, min(block, size - read), read)
            if not data:
                raise CorruptMessage(f"segment ends at byte {read}, expected {size}")
            crc = crc32c(data, crc)
            scanner.blocks.feed(data)
            position = origin + read - len(pending)
            read += len(data)
            piece = pending + data if pending else data
            used = scanner.feed(piece, position, more=size - read)
            pending = piece[used:]
        origin += size
    return scanner.result(), format(crc, "08x")


def encode_index(
    entries: Sequence[tuple[int, int, int]],
    block_crcs: Sequence[int] | None = None,
    block_size: int = BLOCK_SIZE,
) -> bytes:
    """A version 2 index object (version 1, without block checksums, when ``block_crcs`` is
    None: only tests write those, to check that old archives stay readable)."""
    body = b"".join(_ENTRY.pack(*e) for e in entries)
    if block_crcs is None:
        return _HEAD.pack(MAGIC, 1, len(entries)) + body
    return (
        _HEAD.pack(MAGIC, VERSION, len(entries))
        + _BLOCKS.pack(block_size, len(block_crcs))
        + body
        + b"".join(_CRC.pack(c) for c in block_crcs)
    )


def decode_index(data: bytes, size: int) -> RemoteIndex:
    """Parse an index object of an object of ``size`` bytes; raise :class:`IndexFormatError`."""
    if len(data) < _HEAD.size:
        raise IndexFormatError("index object is truncated")
    magic, version, count = _HEAD.unpack_from(data)
    if magic != MAGIC or version not in VERSIONS:
        raise IndexFormatError(f"index object has magic {magic!r} version {version}")
    at = _HEAD.size
    block_size, blocks = BLOCK_SIZE, 0
    if version >= 2:
        if len(data) < at + _BLOCKS.size:
            raise IndexFormatError("index object is truncated")
        block_size, blocks = _BLOCKS.unpack_from(data, at)
        at += _BLOCKS.size
        if block_size <= 0 or blocks != -(-size // block_size):
            raise IndexFormatError(
                f"index object has {blocks} checksum blocks of {block_size} bytes for an "
                f"object of {size} bytes"
            )
    if len(data) != at + count * _ENTRY.size + blocks * _CRC.size or count == 0:
        raise IndexFormatError(f"index object length {len(data)} does not match {count} entries")
    body = data[at : at + count * _ENTRY.size]
    entries = tuple(IndexEntry(*e) for e in _ENTRY.iter_unpack(body))
    if entries[0].position != 0 or any(
        a.position >= b.position or a.base_offset >= b.base_offset
        for a, b in zip(entries, entries[1:], strict=False)
    ):
        raise IndexFormatError("index entries are not strictly increasing from position 0")
    if entries[-1].position >= size:
        raise IndexFormatError("index entry points past the end of the segment")
    if version < 2:
        return RemoteIndex(entries, size)
    crcs = tuple(c for (c,) in _CRC.iter_unpack(data[at + count * _ENTRY.size :]))
    return RemoteIndex(entries, size, block_size, crcs)
