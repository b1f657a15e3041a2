"""Message format v0/v1 <-> v2 record batches, for Produce v0-v2 and Fetch v0-v3 only.

streamd stores v2 batches only (the log validates magic 2). Kafka 3.x still serves clients that
speak the old message formats (sarama 1.22 and kafka-go 0.2 send Produce v2 with message format
v1; Burrow's default settings fetch with Fetch v0), by converting at the edge, and so does this
module:

- **Up-conversion** (Produce v0-v2): every message of the set, inner messages of compressed
  wrappers included, becomes a record of one v2 batch compressed with the producer's codec
  (Kafka's ``compression.type=producer``). Each message's CRC32 is checked first (a mismatch is
  CORRUPT_MESSAGE, nothing is written). Magic 0 messages have no timestamp: their records carry
  -1 (``NO_TIMESTAMP``), as in Kafka.
- **Down-conversion** (Fetch v0-v3): each record from the fetch offset on becomes a message of
  the requested magic (0 for Fetch v0-v1, 1 for v2-v3); control batches are dropped and headers
  are lost, as in Kafka. The messages are sent **uncompressed**: Kafka recompresses with the
  batch's codec, which costs CPU per fetch and needs the codecs' old framings (xerial snappy,
  the KAFKA-3160 lz4 checksum); an old consumer reads uncompressed sets just the same.
  Conversion stops before the message that would pass the partition's byte limit, but the first
  message is always whole (the KIP-74 rule applied to old clients).

Both directions loop over records in Python. That is why they are only ever called from the
old-version branches of the Produce and Fetch handlers: the v2 paths never reach this module.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import crc32c

from streamd.errors import CorruptMessage, ErrorCode, StreamdError
from streamd.log.batch import (
    COMPRESSION_MASK,
    CONTROL,
    HEADER,
    HEADER_SIZE,
    LOG_OVERHEAD,
    TIMESTAMP_TYPE_LOG_APPEND,
    decompress_records,
    parse_header,
    read_varint,
)

NO_TIMESTAMP = -1
GZIP, SNAPPY, LZ4, ZSTD = 1, 2, 3, 4
_MSG_PREFIX = struct.Struct(">qi")
_V0_HEAD = struct.Struct(">Ibb")
_V1_HEAD = struct.Struct(">Ibbq")
_I32 = struct.Struct(">i")
_XERIAL_HEADER = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)

Record = tuple[int, bytes | None, bytes | None]
"""(timestamp, key, value) of one message."""


class UnsupportedCompression(StreamdError):
    code = ErrorCode.UNSUPPORTED_COMPRESSION_TYPE


# ---- up-conversion ------------------------------------------------------------------------


def _bytes_field(data: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
    if pos + 4 > end:
        raise CorruptMessage("message field runs past the end of the message")
    (size,) = _I32.unpack_from(data, pos)
    pos += 4
    if size < 0:
        return None, pos
    if pos + size > end:
        raise CorruptMessage("message field runs past the end of the message")
    return data[pos : pos + size], pos + size


def iter_messages(data: bytes) -> Iterator[tuple[int, int, int, bytes | None, bytes | None]]:
    """(magic, attributes, timestamp, key, value) of each whole message of a v0/v1 set.

    A trailing partial message is corrupt here (a producer sends whole messages)."""
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < _MSG_PREFIX.size + _V0_HEAD.size:
            raise CorruptMessage(f"truncated message at byte {pos}")
        _offset, size = _MSG_PREFIX.unpack_from(data, pos)
        body = pos + _MSG_PREFIX.size
        if size < _V0_HEAD.size + 8 or body + size > end:
            raise CorruptMessage(f"message at byte {pos} claims {size} bytes")
        crc, magic, attributes = _V0_HEAD.unpack_from(data, body)
        if magic not in (0, 1):
            raise CorruptMessage(f"message magic {magic} in a v0/v1 message set")
        if zlib.crc32(memoryview(data)[body + 4 : body + size]) != crc:
            raise CorruptMessage(f"CRC32 mismatch in message at byte {pos}")
        p = body + _V0_HEAD.size
        timestamp = NO_TIMESTAMP
        if magic == 1:
            (timestamp,) = struct.unpack_from(">q", data, p)
            p += 8
        key, p = _bytes_field(data, p, body + size)
        value, p = _bytes_field(data, p, body + size)
        yield magic, attributes, timestamp, key, value
        pos = body + size


def _inner_records(data: bytes) -> tuple[list[Record], int]:
    """Every record of a message set, wrappers unpacked; and the first wrapper's codec."""
    records: list[Record] = []
    codec = 0
    for magic, attributes, timestamp, key, value in iter_messages(data):
        compression = attributes & COMPRESSION_MASK
        if compression == 0:
            records.append((timestamp, key, value))
            continue
        if compression == ZSTD:
            raise UnsupportedCompression("zstd needs message format v2 (Produce v3+)")
        if value is None:
            raise CorruptMessage("compressed wrapper message without a value")
        codec = codec or compression
        try:
            inner = decompress_records(compression, value)
        except StreamdError:
            raise
        except Exception as exc:
            raise CorruptMessage(f"cannot decompress a codec {compression} message: {exc}") from exc
        append_time = magic == 1 and attributes & TIMESTAMP_TYPE_LOG_APPEND
        for _m, inner_attributes, ts, k, v in iter_messages(inner):
            if inner_attributes & COMPRESSION_MASK:
                raise CorruptMessage("nested compressed message")
            records.append((timestamp if append_time else ts, k, v))
    return records, codec


def _varint(value: int, out: bytearray) -> None:
    value = (value << 1) ^ (value >> 63)
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _compress(codec: int, data: bytes) -> bytes:
    if codec == GZIP:
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)
        return packer.compress(data) + packer.flush()
    if codec == SNAPPY:
        import cramjam

        out = bytearray(_XERIAL_HEADER)
        for start in range(0, len(data), 32768):
            block = bytes(cramjam.snappy.compress_raw(data[start : start + 32768]))
            out += _I32.pack(len(block)) + block
        return bytes(out)
    if codec == LZ4:
        import lz4.frame

        return lz4.frame.compress(data)  # type: ignore[no-any-return]
    return data


def build_batch(records: list[Record], codec: int = 0) -> bytes:
    """One v2 batch (base offset 0, no producer id) holding ``records`` in order."""
    if not records:
        raise CorruptMessage("empty message set")
    stamps = [r[0] for r in records]
    base_ts = stamps[0]
    body = bytearray()
    for delta, (ts, key, value) in enumerate(records):
        record = bytearray(b"\0")
        _varint(ts - base_ts if base_ts != NO_TIMESTAMP and ts != NO_TIMESTAMP else 0, record)
        _varint(delta, record)
        for part in (key, value):
            if part is None:
                _varint(-1, record)
            else:
                _varint(len(part), record)
                record += part
        record.append(0)  # no headers
        _varint(len(record), body)
        body += record
    payload = _compress(codec, bytes(body))
    count = len(records)
    header = bytearray(
        HEADER.pack(
            0, HEADER_SIZE - LOG_OVERHEAD + len(payload), -1, 2, 0, codec, count - 1,
            base_ts, max(stamps), -1, -1, -1, count,
        )
    )
    batch = header + payload
    struct.pack_into(">I", batch, 17, crc32c.crc32c(memoryview(batch)[21:]))
    return bytes(batch)


def up_convert(message_set: bytes) -> bytes:
    """A produced v0/v1 message set as one v2 batch (raises CorruptMessage / unsupported)."""
    records, codec = _inner_records(bytes(message_set))
    return build_batch(records, codec)


# ---- down-conversion ----------------------------------------------------------------------


def _message(offset: int, magic: int, attributes: int, ts: int, key: bytes | None,
             value: bytes | None) -> bytes:
    body = bytearray()
    if magic == 1:
        body += struct.pack(">bbq", 1, attributes, ts)
    else:
        body += struct.pack(">bb", 0, attributes)
    for part in (key, value):
        if part is None:
            body += _I32.pack(-1)
        else:
            body += _I32.pack(len(part)) + part
    crc = zlib.crc32(body)
    return _MSG_PREFIX.pack(offset, len(body) + 4) + struct.pack(">I", crc) + bytes(body)


def _iter_v2_records(batch: memoryview, size: int) -> Iterator[tuple[int, int, bytes | None,
                                                                    bytes | None]]:
    """(offset delta, timestamp delta, key, value) of each record of one v2 batch."""
    header = parse_header(batch)
    try:
        data = decompress_records(header.compression, batch[HEADER_SIZE:size])
    except StreamdError:
        raise
    except Exception as exc:
        raise CorruptMessage(f"cannot decompress a stored batch: {exc}") from exc
    pos = 0
    for _ in range(header.records_count):
        length, pos = read_varint(data, pos)
        end = pos + length
        p = pos + 1
        ts_delta, p = read_varint(data, p)
        offset_delta, p = read_varint(data, p)
        key_len, p = read_varint(data, p)
        key = None if key_len < 0 else data[p : p + key_len]
        p += max(key_len, 0)
        value_len, p = read_varint(data, p)
        value = None if value_len < 0 else data[p : p + value_len]
        yield offset_delta, ts_delta, key, value
        pos = end


def down_convert(data: bytes | memoryview, magic: int, fetch_offset: int, limit: int) -> bytes:
    """v2 batches as a v0/v1 message set of the records at ``fetch_offset`` and later."""
    view = memoryview(data)
    out = bytearray()
    pos = 0
    while pos + HEADER_SIZE <= len(view):
        header = parse_header(view, pos)
        size = header.size
        if pos + size > len(view):
            break
        if header.attributes & CONTROL or header.next_offset <= fetch_offset:
            pos += size
            continue
        if header.compression == ZSTD and magic < 2:
            raise UnsupportedCompression("zstd batches cannot be down-converted (Fetch v10+)")
        append_time = header.log_append_time
        attributes = TIMESTAMP_TYPE_LOG_APPEND if append_time and magic == 1 else 0
        for offset_delta, ts_delta, key, value in _iter_v2_records(view[pos:], size):
            offset = header.base_offset + offset_delta
            if offset < fetch_offset:
                continue
            if append_time:
                ts = header.max_timestamp
            elif header.base_timestamp == NO_TIMESTAMP:
                ts = NO_TIMESTAMP
            else:
                ts = header.base_timestamp + ts_delta
            message = _message(offset, magic, attributes, ts, key, value)
            if out and len(out) + len(message) > limit:
                return bytes(out)
            out += message
        pos += size
    return bytes(out)
