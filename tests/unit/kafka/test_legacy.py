"""Retired request versions (built from Kafka 3.9's specs) and message format conversion."""

from __future__ import annotations

import io
import struct

import pytest
from kafka.protocol.old import commit, fetch, list_offsets
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kio.serial import entity_writer

from streamd.errors import CorruptMessage, ErrorCode
from streamd.kafka import codec
from streamd.kafka.legacy import records as conv

RETIRED = {0: [0, 1, 2], 1: [0, 1, 2, 3], 2: [0], 8: [0, 1], 9: [0], 19: [0, 1], 20: [0],
           23: [0, 1], 29: [0], 30: [0], 31: [0], 32: [0], 35: [0]}


@pytest.mark.parametrize(("api_key", "version"),
                         [(k, v) for k, vs in RETIRED.items() for v in vs])
def test_every_retired_version_has_request_and_response_schemas(api_key: int, version: int
                                                                ) -> None:
    request = codec.request_class(api_key, version)
    assert request is not None and request.__version__ == version
    assert codec.response_class(api_key, version).__version__ == version


def _decode(old_request: object, api_key: int, version: int) -> object:
    body = old_request.encode()  # type: ignore[attr-defined]
    frame = struct.pack(">hhih", api_key, version, 1, 0) + body
    return codec.decode_request(codec.parse_header(frame), frame)


def test_requests_decode_as_kafka_python_encodes_them() -> None:
    lo = _decode(list_offsets.ListOffsetsRequest_v0(
        replica_id=-1, topics=[("t", [(3, -2, 7)])]), 2, 0)
    part = lo.topics[0].partitions[0]  # type: ignore[attr-defined]
    assert (part.partition_index, part.timestamp, part.max_num_offsets) == (3, -2, 7)
    oc = _decode(commit.OffsetCommitRequest_v1(
        consumer_group="g", consumer_group_generation_id=4, consumer_id="m",
        topics=[("t", [(0, 9, 1234, "md")])]), 8, 1)
    p = oc.topics[0].partitions[0]  # type: ignore[attr-defined]
    assert (oc.generation_id_or_member_epoch, oc.member_id) == (4, "m")  # type: ignore[attr-defined]
    assert (p.committed_offset, p.commit_timestamp, p.committed_metadata) == (9, 1234, "md")
    f = _decode(fetch.FetchRequest_v0(replica_id=-1, max_wait_time=500, min_bytes=1,
                                      topics=[("t", [(0, 5, 100)])]), 1, 0)
    assert codec.ms(f.max_wait) == 500  # type: ignore[attr-defined]
    assert f.topics[0].partitions[0].fetch_offset == 5  # type: ignore[attr-defined]


def test_responses_encode_as_kafka_python_decodes_them() -> None:
    body = codec.response(2, 0, {"topics": [{"name": "t", "partitions": [
        {"partition_index": 1, "error_code": 0, "old_style_offsets": [9, 0]}]}]})
    out = io.BytesIO()
    entity_writer(type(body))(out, body)
    decoded = list_offsets.ListOffsetsResponse_v0.decode(out.getvalue()).to_object()
    assert decoded["topics"][0]["partitions"][0]["old_style_offsets"] == [9, 0]


def _set(magic: int, n: int, codec_id: int = 0) -> bytes:
    builder = LegacyRecordBatchBuilder(magic=magic, compression_type=codec_id,
                                       batch_size=1 << 20)
    for i in range(n):
        builder.append(i, timestamp=1000 + i if magic else None, key=None, value=b"v%d" % i)
    return bytes(builder.build())


def _records(data: bytes) -> list[tuple[int, int | None, bytes | None, bytes | None]]:
    out = []
    mr = MemoryRecords(data)
    while mr.has_next():
        out += [(r.offset, r.timestamp, r.key, r.value) for r in mr.next_batch()]
    return out


@pytest.mark.parametrize("codec_id", [0, 1, 2, 3])
def test_up_convert_keeps_records_and_codec(codec_id: int) -> None:
    batch = conv.up_convert(_set(1, 4, codec_id))
    assert batch[16] == 2 and struct.unpack_from(">h", batch, 21)[0] & 7 == codec_id
    assert _records(batch) == [(i, 1000 + i, None, b"v%d" % i) for i in range(4)]


def test_up_convert_v0_has_no_timestamp() -> None:
    assert [ts for _, ts, _, _ in _records(conv.up_convert(_set(0, 2, 1)))] == [-1, -1]


def test_up_convert_rejects_a_bad_crc_and_a_torn_set() -> None:
    data = bytearray(_set(1, 2))
    data[-1] ^= 1
    with pytest.raises(CorruptMessage):
        conv.up_convert(bytes(data))
    with pytest.raises(CorruptMessage):
        conv.up_convert(_set(1, 2)[:-3])


def _v2(n: int, compression: int = 0, control: bool = False) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=compression,
                                        is_transactional=control, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)
    for i in range(n):
        builder.append(i, timestamp=5000 + i, key=b"k", value=b"x" * 10,
                       headers=[("h", b"1")])
    return bytes(builder.build())


def test_down_convert_from_an_offset_and_within_a_limit() -> None:
    data = _v2(5)
    assert [o for o, *_ in _records(conv.down_convert(data, 1, 2, 1 << 20))] == [2, 3, 4]
    msgs = _records(conv.down_convert(data, 0, 0, 1 << 20))
    assert [(o, ts, k, v) for o, ts, k, v in msgs][0] == (0, None, b"k", b"x" * 10)
    assert [o for o, *_ in _records(conv.down_convert(data, 1, 0, 1))] == [0]


def test_down_convert_drops_control_batches() -> None:
    data = bytearray(_v2(1))
    attributes = struct.unpack_from(">h", data, 21)[0] | 0x20
    struct.pack_into(">h", data, 21, attributes)
    assert conv.down_convert(bytes(data), 1, 0, 1 << 20) == b""


def test_down_convert_refuses_zstd() -> None:
    with pytest.raises(conv.UnsupportedCompression) as info:
        conv.down_convert(_v2(2, compression=4), 1, 0, 1 << 20)
    assert info.value.code == ErrorCode.UNSUPPORTED_COMPRESSION_TYPE
