"""A small Kafka v2 record-batch builder for tests (no Kafka client involved).

``build_batch`` produces real wire bytes: zigzag-varint records, optional compression and a
valid CRC32C, so the log layer is tested against the same format clients send.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence

import crc32c

Header = tuple[str, bytes | None]
Record = tuple[bytes | None, bytes | None, Sequence[Header], int]

CODECS = {None: 0, "none": 0, "gzip": 1, "snappy": 2, "snappy-xerial": 2, "lz4": 3, "zstd": 4}


def varint(value: int) -> bytes:
    zz = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zz & 0x7F
        zz >>= 7
        if zz:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(value: bytes | None) -> bytes:
    return varint(-1) if value is None else varint(len(value)) + value


def encode_record(
    offset_delta: int,
    timestamp_delta: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[Header],
) -> bytes:
    body = bytearray(b"\x00")
    body += varint(timestamp_delta) + varint(offset_delta)
    body += _bytes_field(key) + _bytes_field(value)
    body += varint(len(headers))
    for hkey, hvalue in headers:
        body += _bytes_field(hkey.encode()) + _bytes_field(hvalue)
    return varint(len(body)) + bytes(body)


def compress(codec: str | None, data: bytes) -> bytes:
    if codec in (None, "none"):
        return data
    if codec == "gzip":
        return gzip.compress(data)
    if codec == "snappy":
        import cramjam

        return bytes(cramjam.snappy.compress_raw(data))
    if codec == "snappy-xerial":
        import cramjam

        out = bytearray(b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1))
        for i in range(0, len(data), 100):
            chunk = bytes(cramjam.snappy.compress_raw(data[i : i + 100]))
            out += struct.pack(">I", len(chunk)) + chunk
        return bytes(out)
    if codec == "lz4":
        import lz4.frame

        return lz4.frame.compress(data)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(codec)


def build_batch(
    records: Sequence[Record],
    base_offset: int = 0,
    compression: str | None = None,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    partition_leader_epoch: int = -1,
    attributes: int = 0,
    magic: int = 2,
) -> bytes:
    """Encode ``records`` (key, value, headers, timestamp) as one v2 record batch."""
    assert records, "a batch needs at least one record"
    base_ts = min(r[3] for r in records)
    max_ts = max(r[3] for r in records)
    body = b"".join(
        encode_record(i, ts - base_ts, key, value, headers)
        for i, (key, value, headers, ts) in enumerate(records)
    )
    attrs = attributes | CODECS[compression]
    tail = struct.pack(
        ">hiqqqhii",
        attrs,
        len(records) - 1,
        base_ts,
        max_ts,
        producer_id,
        producer_epoch,
        base_sequence,
        len(records),
    ) + compress(compression, body)
    crc = crc32c.crc32c(tail)
    batch_length = 4 + 1 + 4 + len(tail)
    prefix = struct.pack(">qiibI", base_offset, batch_length, partition_leader_epoch, magic, crc)
    return prefix + tail


def simple_batch(n: int = 1, ts: int = 1_000, value_size: int = 10, **kw: object) -> bytes:
    """``n`` records with values of ``value_size`` bytes and timestamps ts, ts+1, ..."""
    recs = [(b"k%d" % i, b"v" * value_size, [], ts + i) for i in range(n)]
    return build_batch(recs, **kw)  # type: ignore[arg-type]
