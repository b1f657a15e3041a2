import struct

import crc32c
import pytest

from streamd.errors import CorruptMessage, InvalidRecord, MessageTooLarge
from streamd.log.batch import (
    HEADER_SIZE,
    iter_record_timestamps,
    parse_header,
    patch_for_append,
    validate_produce_batches,
)

from .batches import build_batch, simple_batch

CODECS = [None, "gzip", "snappy", "snappy-xerial", "lz4", "zstd"]


def test_parse_header_fields() -> None:
    data = build_batch(
        [(b"k", b"v", [("h", b"1")], 1000), (None, b"w", [], 1005)],
        base_offset=7,
        producer_id=42,
        producer_epoch=3,
        base_sequence=9,
    )
    h = parse_header(data)
    assert HEADER_SIZE == 61
    assert (h.base_offset, h.magic, h.records_count, h.last_offset_delta) == (7, 2, 2, 1)
    assert (h.base_timestamp, h.max_timestamp) == (1000, 1005)
    assert (h.producer_id, h.producer_epoch, h.base_sequence) == (42, 3, 9)
    assert h.size == len(data)
    assert h.last_offset == 8 and h.next_offset == 9


def test_validate_walks_multiple_batches() -> None:
    payload = simple_batch(3) + simple_batch(1) + simple_batch(5, compression="gzip")
    headers = validate_produce_batches(payload, 1 << 20)
    assert [h.records_count for h in headers] == [3, 1, 5]


def test_empty_payload_is_corrupt() -> None:
    with pytest.raises(CorruptMessage):
        validate_produce_batches(b"", 1 << 20)


def test_crc_mismatch() -> None:
    data = bytearray(simple_batch(2))
    data[-1] ^= 0xFF
    with pytest.raises(CorruptMessage, match="CRC"):
        validate_produce_batches(bytes(data), 1 << 20)


def test_bad_magic() -> None:
    with pytest.raises(CorruptMessage, match="magic"):
        validate_produce_batches(simple_batch(1, magic=1), 1 << 20)


@pytest.mark.parametrize("cut", [1, 10, 60])
def test_trailing_partial_batch(cut: int) -> None:
    good = simple_batch(2)
    with pytest.raises(CorruptMessage):
        validate_produce_batches(good + good[:cut], 1 << 20)
    with pytest.raises(CorruptMessage):
        validate_produce_batches(good[:-cut], 1 << 20)


def test_length_too_small() -> None:
    data = bytearray(simple_batch(1))
    struct.pack_into(">i", data, 8, 20)
    with pytest.raises(CorruptMessage):
        validate_produce_batches(bytes(data), 1 << 20)


def test_oversized_batch() -> None:
    data = simple_batch(1, value_size=2000)
    with pytest.raises(MessageTooLarge):
        validate_produce_batches(data, 1000)
    validate_produce_batches(data, len(data))


def _with_header_field(data: bytes, fmt: str, at: int, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, at, value)
    struct.pack_into(">I", buf, 17, crc32c.crc32c(bytes(buf[21:])))
    return bytes(buf)


def test_last_offset_delta_mismatch() -> None:
    data = _with_header_field(simple_batch(3), ">i", 23, 5)
    with pytest.raises(InvalidRecord):
        validate_produce_batches(data, 1 << 20)


def test_zero_records() -> None:
    data = _with_header_field(_with_header_field(simple_batch(1), ">i", 57, 0), ">i", 23, -1)
    with pytest.raises(InvalidRecord):
        validate_produce_batches(data, 1 << 20)


def test_patch_offsets_keeps_crc_valid() -> None:
    payload = bytearray(simple_batch(3, partition_leader_epoch=9) + simple_batch(2))
    headers = validate_produce_batches(payload, 1 << 20)
    patched = patch_for_append(payload, headers, 100, None)
    again = validate_produce_batches(bytes(payload), 1 << 20)
    assert [h.base_offset for h in again] == [100, 103] == [h.base_offset for h in patched]
    assert again[0].partition_leader_epoch == 0
    assert not again[0].log_append_time
    assert again[0].max_timestamp == headers[0].max_timestamp


def test_patch_log_append_time() -> None:
    payload = bytearray(simple_batch(3, ts=1000, compression="lz4"))
    headers = validate_produce_batches(payload, 1 << 20)
    patch_for_append(payload, headers, 5, 99_999)
    (h,) = validate_produce_batches(bytes(payload), 1 << 20)
    assert h.log_append_time and h.max_timestamp == 99_999 and h.base_timestamp == 1000
    assert h.compression == 3
    assert list(iter_record_timestamps(bytes(payload))) == [(5, 99_999), (6, 99_999), (7, 99_999)]


@pytest.mark.parametrize("codec", CODECS)
def test_record_timestamps_all_codecs(codec: str | None) -> None:
    records = [(b"k%d" % i, b"x" * 250, [("h", b"v")], 5000 + 7 * i) for i in range(20)]
    data = build_batch(records, base_offset=40, compression=codec)
    assert list(iter_record_timestamps(data)) == [(40 + i, 5000 + 7 * i) for i in range(20)]


def test_negative_timestamp_delta_is_zigzag_decoded() -> None:
    data = build_batch([(None, b"a", [], 2000), (None, b"b", [], 1000)])
    assert list(iter_record_timestamps(data)) == [(0, 2000), (1, 1000)]
