import io
import struct
import uuid

from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.request_header.v2.header import RequestHeader
from kio.serial import entity_reader, entity_writer

from streamd.errors import ErrorCode
from streamd.kafka import codec


def request_frame(
    api_key: int, version: int, body: object, header_cls: type = RequestHeader
) -> bytes:
    out = io.BytesIO()
    entity_writer(header_cls)(
        out,
        header_cls(request_api_key=api_key, request_api_version=version, correlation_id=7,
                   client_id="test"),
    )
    entity_writer(type(body))(out, body)
    return out.getvalue()


def test_parse_flexible_header_and_body() -> None:
    body = MetadataRequest(
        topics=(MetadataRequestTopic(topic_id=uuid.UUID(int=0), name="orders"),),
        allow_auto_topic_creation=False,
        include_topic_authorized_operations=False,
    )
    frame = request_frame(3, 12, body)
    header = codec.parse_header(frame)
    assert (header.api_key, header.api_version, header.correlation_id) == (3, 12, 7)
    assert header.client_id == "test"
    decoded = codec.decode_request(header, frame)
    assert decoded.topics[0].name == "orders"
    assert decoded.allow_auto_topic_creation is False


def test_build_fills_missing_fields_and_drops_unknown_ones() -> None:
    data = {
        "brokers": [{"node_id": 1, "host": "h", "port": 9092}],
        "cluster_id": "c",
        "topics": [{"name": "t", "error_code": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}],
    }
    v0 = codec.response(3, 0, data)
    v12 = codec.response(3, 12, data)
    assert not hasattr(v0, "cluster_id")
    assert v12.cluster_id == "c"
    assert v12.topics[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert v12.topics[0].partitions == ()


def test_encoded_response_round_trips_through_kio_reader() -> None:
    body = codec.response(18, 3, {"error_code": 0, "api_keys": [
        {"api_key": 0, "min_version": 3, "max_version": 9}]})
    frame = codec.encode_response(18, 3, 42, body)
    size, corr = struct.unpack_from(">ii", frame)
    assert size == len(frame) - 4 and corr == 42
    decoded, _ = entity_reader(type(body))(frame, 8)  # ApiVersions: header v0, no tag byte
    assert decoded.api_keys[0].max_version == 9


def test_flexible_response_has_header_tag_buffer() -> None:
    body = codec.response(3, 12, {"brokers": [], "topics": []})
    frame = codec.encode_response(3, 12, 1, body)
    assert frame[8] == 0
    decoded, _ = entity_reader(type(body))(frame, 9)
    assert decoded.brokers == ()


def test_log_append_time_int_becomes_datetime() -> None:
    body = codec.response(0, 9, {"responses": [{"name": "t", "partition_responses": [
        {"index": 0, "error_code": 0, "base_offset": 5, "log_append_time": 1700000000123}]}]})
    pr = body.responses[0].partition_responses[0]
    assert round(pr.log_append_time.timestamp() * 1000) == 1700000000123


def test_large_record_sets_are_sent_as_parts_without_copies() -> None:
    big = memoryview(bytes(range(256)) * 1024)  # 256 KiB: referenced, not copied
    small = b"x" * 100  # copied into the frame
    body = codec.response(1, 12, {"responses": [{"topic": "t", "partitions": [
        {"partition_index": 0, "high_watermark": 9, "records": big},
        {"partition_index": 1, "high_watermark": 9, "records": small},
    ]}]})
    parts = codec.encode_response_parts(1, 12, 5, body)
    assert any(p is big for p in parts)
    assert all(len(p) < codec.SCATTER_MIN for p in parts if p is not big)
    frame = b"".join(parts)
    assert frame == codec.encode_response(1, 12, 5, body)
    size, corr = struct.unpack_from(">ii", frame)
    assert size == len(frame) - 4 and corr == 5
    decoded, end = entity_reader(type(body))(frame, 9)
    assert 9 + end == len(frame)  # the reader returns the bytes it consumed
    got = decoded.responses[0].partitions
    assert bytes(got[0].records) == bytes(big) and bytes(got[1].records) == small
