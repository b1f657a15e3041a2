"""Record-level view of v2 batches for compaction: keys, tombstones, and rebuilt batches.

The hot paths never come here (see :mod:`streamd.log.batch`): the cleaner runs in its own
process, and the produce path comes here only for compacted topics (:func:`first_keyless_record`).
Each batch is decompressed once; a record is decoded only as far as the cleaner needs it
(offset delta, timestamp delta, key, whether the value is null) and kept as a byte range of the
records section, so a rebuilt batch is a join of unchanged record bytes.

Record layout (varints are zigzag)::

    length varint | attributes i8 | timestampDelta varlong | offsetDelta varint
    | keyLength varint | key | valueLength varint | value | headerCount varint | headers

Decisions (Kafka's cleaner rebuilds through ``MemoryRecordsBuilder``):

- A rebuilt batch keeps ``baseOffset``, ``lastOffsetDelta`` (so its offset range, and with it the
  producer's sequence range, is unchanged), ``baseSequence``, producer id and epoch, the
  partition leader epoch, the attributes and the codec. Its ``maxTimestamp`` is the largest
  retained record timestamp (CreateTime) or stays the append time (LogAppendTime).
- Record bytes are copied unchanged and ``baseTimestamp`` is kept, so the timestamps consumers
  compute (``baseTimestamp + timestampDelta``) stay exact without re-encoding records. Kafka
  resets ``baseTimestamp`` to the first retained record's; nothing a client reads differs.
- KIP-534: the first time a batch with a retained tombstone (or a transaction marker whose
  transaction has no data left) is cleaned, ``baseTimestamp`` becomes its *delete horizon*
  (cleaning time + ``delete.retention.ms``) and attribute bit 6 is set. Then, and only then,
  every record's timestamp delta is re-encoded relative to the horizon, as Kafka does.
- An empty retained batch (to keep a producer's last sequence, or the last offset of a cleaning
  round) is a header without records: ``recordsCount`` 0, no codec, both timestamps the old
  ``maxTimestamp``; Kafka's ``writeEmptyHeader``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence

import crc32c

from streamd.errors import CorruptMessage, InvalidRecord
from streamd.log.batch import (
    ATTRIBUTES_AT,
    COMPRESSION_MASK,
    CONTROL,
    DELETE_HORIZON,
    HEADER,
    HEADER_SIZE,
    LOG_OVERHEAD,
    TIMESTAMP_TYPE_LOG_APPEND,
    BatchHeader,
    decompress_records,
)

KEYLESS = -1


class Record:
    """One decoded record: where its bytes are in the (decompressed) records section, plus the
    fields the cleaner decides on. ``key`` is None for a null key; ``tombstone`` means a null
    value."""

    __slots__ = ("start", "end", "timestamp_delta", "offset_delta", "key", "tombstone", "body")

    def __init__(
        self,
        start: int,
        end: int,
        timestamp_delta: int,
        offset_delta: int,
        key: bytes | None,
        tombstone: bool,
        body: int,
    ) -> None:
        self.start = start
        self.end = end
        self.timestamp_delta = timestamp_delta
        self.offset_delta = offset_delta
        self.key = key
        self.tombstone = tombstone
        self.body = body
        """Position of the attributes byte (the record after its length varint)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Zigzag varint at ``pos`` -> (value, next position); one and two bytes (every length
    below 8 KiB) take no loop."""
    value = buf[pos]
    if value < 0x80:
        return (value >> 1) ^ -(value & 1), pos + 1
    byte = buf[pos + 1]
    value = (value & 0x7F) | (byte << 7)
    if byte < 0x80:
        return (value >> 1) ^ -(value & 1), pos + 2
    value &= 0x3FFF
    shift = 14
    pos += 2
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), pos
        shift += 7


def encode_varint(value: int) -> bytes:
    zz = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zz > 0x7F:
        out.append((zz & 0x7F) | 0x80)
        zz >>= 7
    out.append(zz)
    return bytes(out)


def records_section(batch: bytes | bytearray | memoryview, header: BatchHeader) -> bytes:
    """The batch's records, decompressed (once)."""
    return decompress_records(header.compression, memoryview(batch)[HEADER_SIZE : header.size])


def iter_records(records: bytes, count: int) -> Iterator[Record]:
    """Decode ``count`` records; CorruptMessage when they do not fit the section."""
    pos = 0
    end_all = len(records)
    varint = _varint
    try:
        for _ in range(count):
            length, body = varint(records, pos)
            end = body + length
            if length < 0 or end > end_all:
                raise CorruptMessage(f"record at byte {pos} overruns its batch")
            ts_delta, p = varint(records, body + 1)
            offset_delta, p = varint(records, p)
            key_len, p = varint(records, p)
            if key_len < 0:
                key = None
            else:
                key = records[p : p + key_len]
                p += key_len
            value_len, _ = varint(records, p)
            yield Record(pos, end, ts_delta, offset_delta, key, value_len < 0, body)
            pos = end
    except IndexError as exc:
        raise CorruptMessage("truncated record") from exc


def first_keyless_record(
    payload: bytes | bytearray | memoryview, headers: Sequence[BatchHeader]
) -> int | None:
    """Index (counting from the payload's first record) of the first data record without a
    key, or None. The produce path of a compacted topic calls this (Kafka refuses such records
    there); control batches are skipped. One scan per record, reading only up to the key."""
    view = memoryview(payload)
    pos = 0
    index = 0
    varint = _varint
    for header in headers:
        if header.attributes & CONTROL:
            pos += header.size
            index += header.records_count
            continue
        records = records_section(view[pos : pos + header.size], header)
        p = 0
        try:
            for _ in range(header.records_count):
                length, body = varint(records, p)
                _, q = varint(records, body + 1)
                _, q = varint(records, q)
                key_len, _ = varint(records, q)
                if key_len < 0:
                    return index
                index += 1
                p = body + length
        except IndexError as exc:
            raise InvalidRecord(f"batch at byte {pos}: truncated record") from exc
        pos += header.size
    return None


def rebuild_batch(
    batch: bytes | bytearray | memoryview,
    header: BatchHeader,
    records: bytes,
    kept: Sequence[Record],
    horizon: int | None,
) -> bytes:
    """A batch holding only ``kept`` (records of ``batch`` in order, decoded from ``records``).

    ``horizon`` sets a new delete horizon (the batch must not have one yet); None keeps the
    batch's own, if any. See the module docstring for what is kept."""
    attributes = header.attributes
    base_ts = header.base_timestamp
    if horizon is not None:
        attributes |= DELETE_HORIZON
        parts = []
        for record in kept:
            old = records[record.body : record.end]
            _, p = _varint(old, 1)
            new_delta = base_ts + record.timestamp_delta - horizon
            body = old[:1] + encode_varint(new_delta) + old[p:]
            parts.append(encode_varint(len(body)) + body)
        section = b"".join(parts)
        new_base_ts = horizon
    else:
        section = b"".join([records[r.start : r.end] for r in kept])
        new_base_ts = base_ts
    if attributes & TIMESTAMP_TYPE_LOG_APPEND:
        max_ts = header.max_timestamp
    else:
        max_ts = max(base_ts + r.timestamp_delta for r in kept)
    body = compress(header.compression, section)
    return _assemble(header, attributes, new_base_ts, max_ts, len(kept), body)


def empty_batch(header: BatchHeader) -> bytes:
    """The header-only batch Kafka keeps when every record of a batch is gone but the batch
    itself must stay (a producer's last sequence, the last offset of a cleaning round)."""
    attributes = header.attributes & ~(COMPRESSION_MASK | DELETE_HORIZON)
    ts = header.max_timestamp
    return _assemble(header, attributes, ts, ts, 0, b"")


def _assemble(
    header: BatchHeader, attributes: int, base_ts: int, max_ts: int, count: int, body: bytes
) -> bytes:
    head = bytearray(
        HEADER.pack(
            header.base_offset,
            HEADER_SIZE - LOG_OVERHEAD + len(body),
            header.partition_leader_epoch,
            header.magic,
            0,
            attributes,
            header.last_offset_delta,
            base_ts,
            max_ts,
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
            count,
        )
    )
    crc = crc32c.crc32c(body, crc32c.crc32c(bytes(head[ATTRIBUTES_AT:])))
    _U32.pack_into(head, 17, crc)
    return bytes(head) + body


_U32 = struct.Struct(">I")


def compress(codec: int, data: bytes) -> bytes:
    """Encode a records section with the batch's own codec, in the forms every Kafka client
    reads: gzip streams, raw snappy, LZ4 frames with independent 64 KiB blocks, zstd frames."""
    if codec == 0:
        return data
    if codec == 1:
        packer = zlib.compressobj(-1, zlib.DEFLATED, 31)
        return packer.compress(data) + packer.flush()
    if codec == 2:
        import cramjam

        return bytes(cramjam.snappy.compress_raw(data))
    if codec == 3:
        import lz4.frame

        return bytes(
            lz4.frame.compress(
                data,
                block_size=lz4.frame.BLOCKSIZE_MAX64KB,
                block_linked=False,
                content_checksum=False,
                store_size=False,
            )
        )
    if codec == 4:
        import cramjam

        return bytes(cramjam.zstd.compress(data))
    raise CorruptMessage(f"unknown compression codec {codec}")


def record_timestamp(header: BatchHeader, record: Record) -> int:
    """The timestamp a consumer sees for ``record``."""
    if header.attributes & TIMESTAMP_TYPE_LOG_APPEND:
        return header.max_timestamp
    return header.base_timestamp + record.timestamp_delta
