"""Kafka v2 record batches, seen from the log: a parsed 61-byte header plus opaque bytes.

Hot paths (produce validation, offset patching, recovery, fetch) touch only headers: one
``struct`` unpack and at most one CRC32C per batch, never a loop over records. The record
decoder at the bottom exists for cold paths only (timestamp lookups).

Layout (big-endian)::

    0 baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8
    17 crc u32 | 21 attributes i16 | 23 lastOffsetDelta i32 | 27 baseTimestamp i64
    35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16 | 53 baseSequence i32
    57 recordsCount i32 | 61 records...

``batchLength`` counts the bytes after itself, so a batch occupies ``batchLength + 12`` bytes.
The CRC32C covers ``attributes`` to the end, which is why ``baseOffset`` and
``partitionLeaderEpoch`` can be patched in place without recomputing it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import crc32c

from streamd.errors import CorruptMessage, InvalidRecord, MessageTooLarge

HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size
LOG_OVERHEAD = 12
"""baseOffset + batchLength: the prefix needed to find the next batch."""
PREFIX = struct.Struct(">qi")
MIN_BATCH_LENGTH = HEADER_SIZE - LOG_OVERHEAD
MAGIC = 2

BASE_OFFSET_AT = 0
PARTITION_LEADER_EPOCH_AT = 12
CRC_AT = 17
ATTRIBUTES_AT = 21
MAX_TIMESTAMP_AT = 35

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_LOG_APPEND = 0x08
TRANSACTIONAL = 0x10
CONTROL = 0x20

_I64 = struct.Struct(">q")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I16 = struct.Struct(">h")


@dataclass(frozen=True, slots=True)
class BatchHeader:
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def size(self) -> int:
        """Bytes the whole batch occupies, header included."""
        return self.batch_length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def log_append_time(self) -> bool:
        return bool(self.attributes & TIMESTAMP_TYPE_LOG_APPEND)

    @property
    def first_timestamp(self) -> int:
        """Timestamp of the first record as a reader sees it."""
        return self.max_timestamp if self.log_append_time else self.base_timestamp


def parse_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Parse the header at ``pos``; the caller guarantees ``HEADER_SIZE`` bytes are there."""
    return BatchHeader(*HEADER.unpack_from(buf, pos))


def batch_crc(buf: bytes | bytearray | memoryview, pos: int, size: int) -> int:
    view = memoryview(buf)
    try:
        return crc32c.crc32c(view[pos + ATTRIBUTES_AT : pos + size])
    finally:
        view.release()


def check_batch(buf: bytes | bytearray | memoryview, pos: int, end: int) -> BatchHeader:
    """Validate the framing and CRC of the batch at ``pos`` (``end`` bounds the data).

    Raises :class:`CorruptMessage` for a torn, truncated, foreign-magic or CRC-failing batch and
    :class:`InvalidRecord` for an inconsistent record count.
    """
    if end - pos < HEADER_SIZE:
        raise CorruptMessage(f"truncated batch header at byte {pos}: {end - pos} bytes left")
    header = parse_header(buf, pos)
    if header.magic != MAGIC:
        raise CorruptMessage(f"unsupported record batch magic {header.magic} at byte {pos}")
    if header.batch_length < MIN_BATCH_LENGTH:
        raise CorruptMessage(f"batch length {header.batch_length} at byte {pos} is too small")
    if pos + header.size > end:
        raise CorruptMessage(
            f"batch at byte {pos} claims {header.size} bytes but only {end - pos} remain"
        )
    actual = batch_crc(buf, pos, header.size)
    if actual != header.crc:
        raise CorruptMessage(
            f"CRC32C mismatch in batch at byte {pos}: stored {header.crc:#010x}, "
            f"computed {actual:#010x}"
        )
    if header.records_count <= 0 or header.records_count != header.last_offset_delta + 1:
        raise InvalidRecord(
            f"batch at byte {pos} has recordsCount {header.records_count} but "
            f"lastOffsetDelta {header.last_offset_delta}"
        )
    return header


def validate_produce_batches(
    data: bytes | bytearray | memoryview, max_message_bytes: int
) -> list[BatchHeader]:
    """Check every batch of a produce payload; return their headers in order.

    The payload must be a whole number of batches: a trailing partial batch is corrupt.
    """
    end = len(data)
    if end == 0:
        raise CorruptMessage("empty record set")
    headers: list[BatchHeader] = []
    pos = 0
    while pos < end:
        if end - pos >= HEADER_SIZE:
            size = _I32.unpack_from(data, pos + 8)[0] + LOG_OVERHEAD
            if size > max_message_bytes and pos + size <= end:
                raise MessageTooLarge(
                    f"record batch of {size} bytes exceeds max.message.bytes={max_message_bytes}"
                )
        header = check_batch(data, pos, end)
        headers.append(header)
        pos += header.size
    return headers


def check_client_batches(headers: Sequence[BatchHeader]) -> None:
    """What a client may not write: control batches are the transaction coordinator's
    (markers), and a transactional batch needs a producer id, or no transaction could ever end
    it. One attribute test per batch."""
    for header in headers:
        if header.attributes & (CONTROL | TRANSACTIONAL):
            if header.attributes & CONTROL:
                raise InvalidRecord("clients may not write control batches (transaction markers)")
            if header.producer_id < 0:
                raise InvalidRecord("a transactional batch needs a producer id")


def patch_for_append(
    buf: bytearray,
    headers: Sequence[BatchHeader],
    base_offset: int,
    log_append_time_ms: int | None,
) -> list[BatchHeader]:
    """Assign offsets from ``base_offset`` to the contiguous batches in ``buf``, in place.

    With ``log_append_time_ms`` the batches become LogAppendTime batches, as Kafka does it:
    the timestamp-type attribute bit is set and ``maxTimestamp`` becomes the append time (record
    deltas untouched), then the CRC is recomputed. ``partitionLeaderEpoch`` is reset to 0.
    Returns the patched headers.
    """
    patched: list[BatchHeader] = []
    pos = 0
    offset = base_offset
    for header in headers:
        _I64.pack_into(buf, pos + BASE_OFFSET_AT, offset)
        _I32.pack_into(buf, pos + PARTITION_LEADER_EPOCH_AT, 0)
        if log_append_time_ms is not None:
            _I16.pack_into(buf, pos + ATTRIBUTES_AT, header.attributes | TIMESTAMP_TYPE_LOG_APPEND)
            _I64.pack_into(buf, pos + MAX_TIMESTAMP_AT, log_append_time_ms)
            _U32.pack_into(buf, pos + CRC_AT, batch_crc(buf, pos, header.size))
        patched.append(parse_header(buf, pos))
        offset += header.last_offset_delta + 1
        pos += header.size
    return patched


# ---- cold path: record-level decoding ---------------------------------------------------------

_XERIAL_MAGIC = b"\x82SNAPPY\x00"


def decompress_records(compression: int, data: bytes | memoryview) -> bytes:
    if compression == 0:
        return bytes(data)
    if compression == 1:
        return zlib.decompress(bytes(data), wbits=47)
    if compression == 2:
        import cramjam

        raw = bytes(data)
        if raw.startswith(_XERIAL_MAGIC):
            out = bytearray()
            pos = 16
            while pos < len(raw):
                (n,) = _U32.unpack_from(raw, pos)
                out += bytes(cramjam.snappy.decompress_raw(raw[pos + 4 : pos + 4 + n]))
                pos += 4 + n
            return bytes(out)
        return bytes(cramjam.snappy.decompress_raw(raw))
    if compression == 3:
        import lz4.frame

        return bytes(lz4.frame.decompress(bytes(data)))
    if compression == 4:
        import cramjam

        return bytes(cramjam.zstd.decompress(bytes(data)))
    raise CorruptMessage(f"unknown compression codec {compression}")


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Zigzag varint/varlong at ``pos`` -> (value, next position)."""
    result = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def iter_record_timestamps(batch: bytes | bytearray | memoryview) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, timestamp)`` for every record of one batch (decompressing if needed)."""
    header = parse_header(batch)
    records = decompress_records(header.compression, memoryview(batch)[HEADER_SIZE : header.size])
    pos = 0
    for _ in range(header.records_count):
        length, pos = read_varint(records, pos)
        end = pos + length
        ts_delta, p = read_varint(records, pos + 1)
        offset_delta, _ = read_varint(records, p)
        if header.log_append_time:
            yield header.base_offset + offset_delta, header.max_timestamp
        else:
            yield header.base_offset + offset_delta, header.base_timestamp + ts_delta
        pos = end
