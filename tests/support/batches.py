"""A minimal v2 record batch encoder for wire tests, with the offsets of every header field
so a test can break exactly one of them.

Layout (big-endian), `OFF_*` constants below:
  baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 | crc u32 |
  attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
  producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records...
batchLength counts the bytes after itself; the CRC32C covers attributes to the end.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

import crc32c

OFF_BASE_OFFSET = 0
OFF_LENGTH = 8
OFF_LEADER_EPOCH = 12
OFF_MAGIC = 16
OFF_CRC = 17
OFF_ATTRIBUTES = 21
OFF_LAST_OFFSET_DELTA = 23
OFF_RECORD_COUNT = 57
HEADER_SIZE = 61


def _varint(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        if zigzag:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes(value: bytes | None) -> bytes:
    return _varint(-1) if value is None else _varint(len(value)) + value


def encode_record(
    offset_delta: int,
    timestamp_delta: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] = (),
) -> bytes:
    body = bytearray(b"\x00")
    body += _varint(timestamp_delta) + _varint(offset_delta) + _bytes(key) + _bytes(value)
    body += _varint(len(headers))
    for name, hvalue in headers:
        body += _bytes(name.encode()) + _bytes(hvalue)
    return _varint(len(body)) + bytes(body)


def build_batch(
    values: Sequence[bytes | None],
    *,
    keys: Sequence[bytes | None] | None = None,
    base_timestamp: int | None = None,
    base_offset: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
) -> bytes:
    """An uncompressed batch of `values` (timestamps 1 ms apart, from now by default, so
    retention never touches it), with a valid CRC."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    keys = keys if keys is not None else [None] * len(values)
    records = b"".join(
        encode_record(i, i, k, v) for i, (k, v) in enumerate(zip(keys, values, strict=True))
    )
    n = len(values)
    tail = struct.pack(
        ">hiqqqhii",
        attributes,
        n - 1,
        base_timestamp,
        base_timestamp + n - 1,
        producer_id,
        producer_epoch,
        base_sequence,
        n,
    )
    tail += records
    head = struct.pack(">qiib", base_offset, 4 + 1 + 4 + len(tail), -1, 2)
    return head + struct.pack(">I", crc32c.crc32c(tail)) + tail


def refresh_crc(batch: bytes) -> bytes:
    """Recompute the CRC after editing fields it covers (so only the edit is wrong)."""
    return (
        batch[:OFF_CRC]
        + struct.pack(">I", crc32c.crc32c(batch[OFF_ATTRIBUTES:]))
        + batch[OFF_ATTRIBUTES:]
    )


def patch(batch: bytes, offset: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    return batch[:offset] + struct.pack(fmt, value) + batch[offset + size :]


def batch_spans(data: bytes) -> list[tuple[int, int, int, int]]:
    """Walk a segment's bytes: (start, end, base offset, last offset) of each batch whose
    declared length fits in `data`. No CRC check; tests use it to find batch boundaries."""
    spans = []
    pos = 0
    while pos + HEADER_SIZE <= len(data):
        base, length = struct.unpack_from(">qi", data, pos)
        end = pos + 12 + length
        if length < HEADER_SIZE - 12 or end > len(data):
            break
        (delta,) = struct.unpack_from(">i", data, pos + OFF_LAST_OFFSET_DELTA)
        spans.append((pos, end, base, base + delta))
        pos = end
    return spans
