"""The topic's codec and timestamp limits applied to produce batches (streamd.log.conform)."""

import os
import struct
from pathlib import Path

import pytest

from streamd.errors import InvalidTimestamp, MessageTooLarge
from streamd.log.batch import (
    check_batch,
    decompress_records,
    parse_header,
    validate_produce_batches,
)
from streamd.log.conform import check_timestamps, conform_batches
from streamd.log.topic_config import TopicConfig

from .batches import build_batch
from .helpers import open_log

CODECS = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
RECORDS = [(b"k%d" % i, b"value-%d " % i * 20, [("h", b"x")], 1_000 + i) for i in range(50)]


def topic(**settings: str) -> TopicConfig:
    return TopicConfig.from_overrides({}, {k.replace("_", "."): v for k, v in settings.items()})


def records_of(batch: bytes) -> bytes:
    header = parse_header(batch)
    return decompress_records(header.compression, memoryview(batch)[61 : header.size])


@pytest.mark.parametrize("source", [None, "gzip", "snappy", "snappy-xerial", "lz4", "zstd"])
@pytest.mark.parametrize("target", ["uncompressed", "gzip", "snappy", "lz4", "zstd"])
def test_recompression_keeps_the_records_and_every_other_header_field(
    source: str | None, target: str
) -> None:
    original = build_batch(
        RECORDS, compression=source, producer_id=7, producer_epoch=2, base_sequence=40
    )
    before = parse_header(original)
    payload = original + build_batch(RECORDS[:3], compression=source)
    headers = validate_produce_batches(payload, 1 << 20)
    out, new_headers = conform_batches(payload, headers, topic(compression_type=target))
    assert validate_produce_batches(out, 1 << 20) == new_headers
    first = bytes(out[: new_headers[0].size])
    check_batch(first, 0, len(first))
    after = new_headers[0]
    assert after.compression == CODECS[target]
    assert records_of(first) == records_of(original)
    unchanged = (
        "base_offset",
        "last_offset_delta",
        "base_timestamp",
        "max_timestamp",
        "producer_id",
        "producer_epoch",
        "base_sequence",
        "records_count",
    )
    assert [getattr(after, f) for f in unchanged] == [getattr(before, f) for f in unchanged]
    assert after.attributes & ~0x07 == before.attributes & ~0x07


def test_batches_already_in_the_target_codec_are_kept_byte_for_byte() -> None:
    payload = build_batch(RECORDS, compression="gzip")
    headers = validate_produce_batches(payload, 1 << 20)
    out, _ = conform_batches(
        payload, headers, topic(compression_type="gzip", compression_gzip_level="1")
    )
    assert bytes(out) == payload
    out, _ = conform_batches(payload, headers, topic(compression_type="producer"))
    assert bytes(out) == payload


def test_uncompressed_control_batches_stay_uncompressed() -> None:
    control = build_batch([(b"\x00\x00\x00\x00", b"", [], 5)], attributes=0x20 | 0x10)
    headers = validate_produce_batches(control, 1 << 20)
    out, _ = conform_batches(control, headers, topic(compression_type="zstd"))
    assert bytes(out) == control


def test_lz4_frames_use_independent_blocks_without_content_size() -> None:
    """Kafka's Java LZ4 reader refuses dependent blocks ("Dependent block stream is
    unsupported"); python-lz4 links blocks by default."""
    payload = build_batch(RECORDS)
    out, headers = conform_batches(
        payload, validate_produce_batches(payload, 1 << 20), topic(compression_type="lz4")
    )
    frame = bytes(out[61 : headers[0].size])
    assert struct.unpack_from("<I", frame)[0] == 0x184D2204
    flg, bd = frame[4], frame[5]
    assert flg >> 6 == 0b01, "frame version 01"
    assert flg & 0x20, "block independence"
    assert not flg & 0x08, "no content size"
    assert (bd >> 4) & 0x07 == 4, "64 KiB blocks"


def test_max_message_bytes_applies_after_recompression() -> None:
    noise = [(None, os.urandom(2000), [], 1)]
    payload = build_batch(noise)
    headers = validate_produce_batches(payload, len(payload))
    config = topic(compression_type="gzip", max_message_bytes=str(len(payload)))
    with pytest.raises(MessageTooLarge, match="after recompression to gzip"):
        conform_batches(payload, headers, config)


def test_timestamp_limits_refuse_batches_outside_the_window() -> None:
    now = 10_000_000
    config = topic(message_timestamp_before_max_ms="1000", message_timestamp_after_max_ms="100")

    def check(*timestamps: int, cfg: TopicConfig = config) -> None:
        batch = build_batch([(None, b"v", [], ts) for ts in timestamps])
        check_timestamps(validate_produce_batches(batch, 1 << 20), cfg, now)

    check(now - 1000, now + 100)
    with pytest.raises(InvalidTimestamp, match="out of range"):
        check(now - 1001, now)
    with pytest.raises(InvalidTimestamp):
        check(now, now + 101)
    check(now - 10**9, cfg=topic())  # no limits by default
    check(
        now - 10**9,
        cfg=topic(message_timestamp_type="LogAppendTime", message_timestamp_before_max_ms="1"),
    )
    with pytest.raises(InvalidTimestamp):
        check(now - 50, cfg=topic(message_timestamp_difference_max_ms="10"))


async def test_the_log_stores_the_topic_codec(tmp_path: Path) -> None:
    plog = open_log(tmp_path / "p", compression_type="zstd", compression_zstd_level="1")
    result = await plog.append(build_batch(RECORDS, compression="gzip"), now_ms=2_000)
    assert (result.base_offset, result.last_offset) == (0, 49)
    piece = plog.read(0, 1 << 20)
    assert piece is not None
    stored = piece.read_bytes()
    header = check_batch(stored, 0, len(stored))
    assert header.compression == 4 and header.base_offset == 0
    assert records_of(stored) == records_of(build_batch(RECORDS))
    await plog.close()


async def test_the_log_refuses_out_of_window_timestamps_without_writing(tmp_path: Path) -> None:
    plog = open_log(tmp_path / "p", message_timestamp_after_max_ms="0")
    with pytest.raises(InvalidTimestamp):
        await plog.append(build_batch([(None, b"v", [], 5_000)]), now_ms=4_999)
    assert plog.log_end_offset == 0
    await plog.append(build_batch([(None, b"v", [], 5_000)]), now_ms=5_000)
    assert plog.log_end_offset == 1
    await plog.close()
