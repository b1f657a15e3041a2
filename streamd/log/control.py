"""Transaction markers: the control batches that end a transaction on a partition (KIP-98).

A marker is a v2 batch with the CONTROL and TRANSACTIONAL attribute bits, the producer id and
epoch of the transaction, base sequence -1 and exactly one record, never compressed::

    key   = version i16 (0) | type i16 (0 ABORT, 1 COMMIT)
    value = version i16 (0) | coordinator epoch i32

Consumers skip control batches; read_committed consumers use ABORT markers to stop skipping an
aborted producer. The coordinator writes markers, so they never pass the produce validation
(clients may not write control batches at all: :func:`streamd.log.batch.validate_produce_batches`
refuses them).
"""

from __future__ import annotations

import struct

import crc32c

from streamd.errors import CorruptMessage
from streamd.log.batch import CONTROL, HEADER, HEADER_SIZE, TRANSACTIONAL, BatchHeader

ABORT = 0
COMMIT = 1
_CONTROL_KEY = struct.Struct(">hh")
_CONTROL_VALUE = struct.Struct(">hi")


def _varint(value: int) -> bytes:
    zz = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zz > 0x7F:
        out.append((zz & 0x7F) | 0x80)
        zz >>= 7
    out.append(zz)
    return bytes(out)


def marker_batch(
    producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int, timestamp_ms: int
) -> bytes:
    """A complete, CRC-stamped marker batch at base offset 0 (the log patches the offset)."""
    key = _CONTROL_KEY.pack(0, COMMIT if commit else ABORT)
    value = _CONTROL_VALUE.pack(0, coordinator_epoch)
    body = (
        b"\x00"  # record attributes
        + _varint(0)  # timestamp delta
        + _varint(0)  # offset delta
        + _varint(len(key))
        + key
        + _varint(len(value))
        + value
        + _varint(0)  # headers
    )
    record = _varint(len(body)) + body
    tail = struct.pack(
        ">hiqqqhii",
        CONTROL | TRANSACTIONAL,
        0,
        timestamp_ms,
        timestamp_ms,
        producer_id,
        producer_epoch,
        -1,
        1,
    ) + record
    crc = crc32c.crc32c(tail)
    return struct.pack(">qiibI", 0, len(tail) + 9, -1, 2, crc) + tail


def is_control(header: BatchHeader) -> bool:
    return bool(header.attributes & CONTROL)


def is_transactional(header: BatchHeader) -> bool:
    return bool(header.attributes & TRANSACTIONAL)


def marker_type(batch: bytes | bytearray | memoryview) -> int:
    """ABORT or COMMIT of a whole control batch (header included); CorruptMessage otherwise."""
    header = BatchHeader(*HEADER.unpack_from(batch, 0))
    if not is_control(header) or header.compression:
        raise CorruptMessage("not an uncompressed control batch")
    pos = HEADER_SIZE
    try:
        _, pos = _read_varint(batch, pos)  # record length
        pos += 1  # attributes
        _, pos = _read_varint(batch, pos)  # timestamp delta
        _, pos = _read_varint(batch, pos)  # offset delta
        key_len, pos = _read_varint(batch, pos)
        if key_len < 4 or pos + 4 > header.size:
            raise CorruptMessage("control record key is too short")
        _, kind = _CONTROL_KEY.unpack_from(batch, pos)
    except (IndexError, struct.error) as exc:
        raise CorruptMessage(f"truncated control record: {exc}") from exc
    if kind not in (ABORT, COMMIT):
        raise CorruptMessage(f"unknown control record type {kind}")
    return int(kind)


def _read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7

