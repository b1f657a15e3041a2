"""What a topic's config asks of incoming batches beyond framing: timestamp limits and codec.

Runs on the produce path after :func:`streamd.log.batch.validate_produce_batches`, so it works
per batch and never per record:

- ``message.timestamp.before/after.max.ms`` (and the deprecated ``difference`` that stands in
  for them) apply to CreateTime topics. Kafka checks every record; streamd checks the header:
  the first record's timestamp (``baseTimestamp``) against the ``before`` limit and the batch's
  ``maxTimestamp`` against the ``after`` limit. A record inside a batch that is older than the
  batch's first record is therefore not checked (clients write records in time order). A
  refused batch fails the whole partition's payload with INVALID_TIMESTAMP, as in Kafka.
- ``compression.type`` other than ``producer`` makes the broker store batches with that codec,
  as Kafka does: a v2 batch's records section is one compressed blob, so recompressing is one
  decompress and one compress per batch, then the codec bits, ``batchLength`` and the CRC are
  rewritten. Every other header field (producer id, sequence, timestamps, flags) is kept.
  Batches already in the target codec are kept byte for byte (Kafka does not recompress them
  for a different level either), and uncompressed control batches stay uncompressed.
  ``max.message.bytes`` is checked again on the result (Kafka's RecordTooLarge after
  recompression).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import crc32c

from streamd.errors import InvalidTimestamp, MessageTooLarge
from streamd.log.batch import (
    ATTRIBUTES_AT,
    COMPRESSION_MASK,
    CONTROL,
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchHeader,
    decompress_records,
    parse_header,
)
from streamd.log.topic_config import CODEC_IDS, INT64_MAX, TopicConfig

_LENGTH_AT = 8
_CRC_AT = 17
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I16 = struct.Struct(">h")
NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4


def conform_batches(
    payload: bytes | bytearray | memoryview,
    headers: Sequence[BatchHeader],
    config: TopicConfig,
) -> tuple[bytearray, list[BatchHeader]]:
    """The payload as the topic stores it (a fresh bytearray the caller may patch) and the
    headers of its batches."""
    buf = bytearray(payload)
    if config.compression_type == "producer":
        return buf, list(headers)
    target = CODEC_IDS[config.compression_type]
    if all(_kept(h, target) for h in headers):
        return buf, list(headers)
    level = config.target_level
    out = bytearray()
    pos = 0
    for header in headers:
        end = pos + header.size
        if _kept(header, target):
            out += buf[pos:end]
        else:
            out += recompress(memoryview(buf)[pos:end], header, target, level)
        pos = end
    new_headers = []
    pos = 0
    while pos < len(out):
        header = parse_header(out, pos)
        if header.size > config.max_message_bytes:
            raise MessageTooLarge(
                f"record batch of {header.size} bytes after recompression to "
                f"{config.compression_type} exceeds max.message.bytes={config.max_message_bytes}"
            )
        new_headers.append(header)
        pos += header.size
    return out, new_headers


def _kept(header: BatchHeader, target: int) -> bool:
    return header.compression == target or (
        header.compression == NONE and bool(header.attributes & CONTROL)
    )


def check_timestamps(headers: Sequence[BatchHeader], config: TopicConfig, now_ms: int) -> None:
    """Raise InvalidTimestamp for a CreateTime batch outside the topic's timestamp window."""
    if (
        config.message_timestamp_difference_max_ms == INT64_MAX
        and config.message_timestamp_before_max_ms == INT64_MAX
        and config.message_timestamp_after_max_ms == INT64_MAX
    ) or config.log_append_time:
        return
    before, after = config.timestamp_before_max_ms, config.timestamp_after_max_ms
    for index, header in enumerate(headers):
        first, newest = header.first_timestamp, header.max_timestamp
        if (first >= 0 and now_ms - first > before) or (newest >= 0 and newest - now_ms > after):
            raise InvalidTimestamp(
                f"batch {index}: timestamps [{first}, {newest}] are out of range; they should be "
                f"within [{now_ms - before}, {now_ms + after}] (message.timestamp.before.max.ms="
                f"{before}, message.timestamp.after.max.ms={after})"
            )


def recompress(batch: memoryview, header: BatchHeader, codec: int, level: int | None) -> bytes:
    """One batch with its records section re-encoded with ``codec``."""
    records = decompress_records(header.compression, batch[HEADER_SIZE : header.size])
    body = compress(codec, records, level)
    head = bytearray(batch[:HEADER_SIZE])
    _I32.pack_into(head, _LENGTH_AT, HEADER_SIZE - LOG_OVERHEAD + len(body))
    _I16.pack_into(head, ATTRIBUTES_AT, (header.attributes & ~COMPRESSION_MASK) | codec)
    crc = crc32c.crc32c(bytes(head[ATTRIBUTES_AT:]))
    crc = crc32c.crc32c(body, crc)
    _U32.pack_into(head, _CRC_AT, crc)
    return bytes(head) + body


def compress(codec: int, data: bytes, level: int | None = None) -> bytes:
    """Encode a records section the way Kafka's clients read it: gzip streams, raw snappy
    (readers accept it beside xerial framing), LZ4 frames with independent 64 KiB blocks (Kafka's
    Java reader refuses linked blocks) and zstd frames."""
    if codec == NONE:
        return data
    if codec == GZIP:
        packer = zlib.compressobj(-1 if level is None else level, zlib.DEFLATED, 31)
        return packer.compress(data) + packer.flush()
    if codec == SNAPPY:
        import cramjam

        return bytes(cramjam.snappy.compress_raw(data))
    if codec == LZ4:
        import lz4.frame

        return bytes(
            lz4.frame.compress(
                data,
                compression_level=min(9 if level is None else level, 16),
                block_size=lz4.frame.BLOCKSIZE_MAX64KB,
                block_linked=False,
                content_checksum=False,
                store_size=False,
            )
        )
    if codec == ZSTD:
        import cramjam

        return bytes(cramjam.zstd.compress(data, level=3 if level is None else level))
    raise ValueError(f"unknown codec {codec}")
