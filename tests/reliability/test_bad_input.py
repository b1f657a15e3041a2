"""Hostile and broken input on raw sockets: the broker answers with the right error or closes
that one connection, never crashes, and never appends anything from a rejected batch.

Requests are encoded with kio; frames and record batches are built by hand where the test
needs them broken (tests.support.batches).

Producers here send acks=-1 without a producer id: idempotence and consumer groups arrive
with the group coordinator.
"""

from __future__ import annotations

import contextlib
import struct
from datetime import timedelta

import pytest
from kio.schema.api_versions.v0.response import ApiVersionsResponse as ApiVersionsResponseV0
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v9.request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)

from tests.conftest import BrokerFactory
from tests.support import ops
from tests.support.batches import (
    OFF_CRC,
    OFF_LAST_OFFSET_DELTA,
    OFF_LENGTH,
    build_batch,
    patch,
    refresh_crc,
)
from tests.support.broker import BrokerProcess
from tests.support.wire import Wire, encode, frame, request_header

NONE = 0
CORRUPT_MESSAGE = 2
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35
INVALID_RECORD = 87
MAX_MESSAGE_BYTES = 10_000
API_VERSIONS_KEY = 18


def api_versions(address: tuple[str, int]) -> list[int]:
    """A fresh connection's ApiVersions; proves the broker still serves."""
    with Wire(address) as wire:
        resp = wire.call(
            ApiVersionsRequest(client_software_name="streamd-tests", client_software_version="1")
        )
    assert resp.error_code == NONE, resp
    return [k.api_key for k in resp.api_keys]


def assert_still_serving(broker: BrokerProcess) -> None:
    assert broker.running, "broker process died\n" + broker.log_tail()
    assert API_VERSIONS_KEY in api_versions(broker.address)


# -- framing -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [-1, -2_000_000_000], ids=["minus-one", "very-negative"])
def test_negative_frame_length_closes_connection(broker: BrokerProcess, size: int) -> None:
    with Wire(broker.address) as wire:
        wire.send(struct.pack(">i", size) + b"\x00" * 16)
        assert wire.closed_by_peer(), "broker kept a connection with a negative frame size"
    assert_still_serving(broker)


@pytest.mark.streamd_only
def test_oversized_frame_closes_connection(broker_factory: BrokerFactory) -> None:
    broker = broker_factory({"socket.request.max.bytes": "1048576"})
    with Wire(broker.address) as wire:
        wire.send(struct.pack(">i", 1048576 + 1) + b"\x00" * 64)
        assert wire.closed_by_peer(), "broker accepted a frame above socket.request.max.bytes"
    with Wire(broker.address) as wire:
        wire.send(struct.pack(">i", 2**31 - 1))
        assert wire.closed_by_peer(), "broker waited for a 2 GiB frame"
    with Wire(broker.address) as wire:
        idle = wire.request_bytes(
            ApiVersionsRequest(client_software_name="streamd-tests", client_software_version="1")
        )
        wire.send(idle)
        assert wire.decode(ApiVersionsRequest, wire.read_frame()).error_code == NONE
    assert_still_serving(broker)


def test_unknown_api_key(broker: BrokerProcess) -> None:
    header = struct.pack(">hhi", 32000, 0, 7) + struct.pack(">h", 5) + b"tests"
    with Wire(broker.address) as wire:
        wire.send(frame(header + b"\x00" * 8))
        wire.sock.settimeout(10)
        try:
            reply = wire.read_frame()
        except (ConnectionError, OSError):
            reply = None
        if reply is not None:
            (correlation_id,) = struct.unpack(">i", reply[:4])
            assert correlation_id == 7, f"reply to an unknown API has correlation {correlation_id}"
    assert_still_serving(broker)


def test_truncated_request_body(broker: BrokerProcess) -> None:
    request = MetadataRequest(
        topics=(MetadataRequestTopic(topic_id=None, name="some-topic"),),
        allow_auto_topic_creation=False,
        include_topic_authorized_operations=False,
    )
    with Wire(broker.address) as wire:
        payload = wire.request_bytes(request)[4:]
        cut = payload[: len(payload) - 6]
        wire.send(frame(cut))
        wire.sock.settimeout(10)
        with contextlib.suppress(ConnectionError, OSError):
            wire.read_frame()
    assert_still_serving(broker)


def test_api_versions_unsupported_version(broker: BrokerProcess) -> None:
    """KIP-511: answer an ApiVersions version the broker does not know with a v0 response
    carrying UNSUPPORTED_VERSION and the supported ranges, so the client can retry."""
    body = ApiVersionsRequest(client_software_name="streamd-tests", client_software_version="1")
    with Wire(broker.address) as wire:
        wire.correlation_id = 41
        header = request_header(ApiVersionsRequest, 41, version=99)
        wire.send(frame(encode(header) + encode(body)))
        resp = wire.decode(ApiVersionsRequest, wire.read_frame(), ApiVersionsResponseV0)
    assert resp.error_code == UNSUPPORTED_VERSION, resp
    versions = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}
    assert API_VERSIONS_KEY in versions and versions[API_VERSIONS_KEY][1] >= 3, versions
    assert_still_serving(broker)


# -- produce -----------------------------------------------------------------------------


def produce_raw(broker: BrokerProcess, topic: str, batch: bytes) -> tuple[int, int]:
    """Produce one raw batch to partition 0 with Produce v9; (error code, base offset)."""
    request = ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=timedelta(seconds=10),
        topic_data=(
            TopicProduceData(
                name=topic,
                partition_data=(PartitionProduceData(index=0, records=batch),),
            ),
        ),
    )
    with Wire(broker.address) as wire:
        resp = wire.call(request)
    ((topic_resp,),) = [resp.responses]
    (part,) = topic_resp.partition_responses
    return int(part.error_code), int(part.base_offset)


@pytest.fixture
def produce_topic(broker: BrokerProcess, topic_name: str) -> str:
    ops.create_topic(broker.bootstrap, topic_name, 1, {"max.message.bytes": str(MAX_MESSAGE_BYTES)})
    ops.produce(broker.bootstrap, topic_name, [b"seed-0", b"seed-1"])
    return topic_name


def test_valid_raw_batch_is_appended(broker: BrokerProcess, produce_topic: str) -> None:
    """Control case: the hand-built batch itself is fine."""
    batch = build_batch([b"a", b"b", b"c"], keys=[b"1", None, b"3"])
    assert produce_raw(broker, produce_topic, batch) == (NONE, 2)
    assert ops.watermarks(broker.bootstrap, produce_topic) == (0, 5)
    got = ops.consume(broker.bootstrap, produce_topic)
    assert [(m.offset, m.key, m.value) for m in got[2:]] == [
        (2, b"1", b"a"),
        (3, None, b"b"),
        (4, b"3", b"c"),
    ]


def _bad_crc() -> bytes:
    batch = build_batch([b"x" * 50, b"y"])
    (crc,) = struct.unpack_from(">I", batch, OFF_CRC)
    return patch(batch, OFF_CRC, ">I", crc ^ 0x1)


def _flipped_payload_byte() -> bytes:
    batch = build_batch([b"x" * 50, b"y"])
    return batch[:-3] + bytes([batch[-3] ^ 0xFF]) + batch[-2:]


def _length(delta: int) -> bytes:
    batch = build_batch([b"x" * 50, b"y"])
    (length,) = struct.unpack_from(">i", batch, OFF_LENGTH)
    return patch(batch, OFF_LENGTH, ">i", length + delta)


def _last_offset_delta(value: int) -> bytes:
    batch = build_batch([b"a", b"b", b"c"])
    return refresh_crc(patch(batch, OFF_LAST_OFFSET_DELTA, ">i", value))


CASES = {
    "bad-crc": (_bad_crc, CORRUPT_MESSAGE),
    "flipped-payload-byte": (_flipped_payload_byte, CORRUPT_MESSAGE),
    "length-too-long": (lambda: _length(+10), CORRUPT_MESSAGE),
    "length-too-short": (lambda: _length(-10), CORRUPT_MESSAGE),
    "length-negative": (lambda: _length(-10_000), CORRUPT_MESSAGE),
    "trailing-partial-batch": (lambda: build_batch([b"ok"]) + b"\x00" * 20, CORRUPT_MESSAGE),
    "oversized": (lambda: build_batch([b"z" * (MAX_MESSAGE_BYTES + 100)]), MESSAGE_TOO_LARGE),
    "last-offset-delta-high": (lambda: _last_offset_delta(5), INVALID_RECORD),
    "last-offset-delta-low": (lambda: _last_offset_delta(1), INVALID_RECORD),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rejected_batch_appends_nothing(
    broker: BrokerProcess, produce_topic: str, case: str
) -> None:
    make, expected = CASES[case]
    before = ops.watermarks(broker.bootstrap, produce_topic)

    error, _ = produce_raw(broker, produce_topic, make())

    assert error == expected, f"{case}: broker answered error {error}, expected {expected}"
    assert ops.watermarks(broker.bootstrap, produce_topic) == before
    assert produce_raw(broker, produce_topic, build_batch([b"after"])) == (NONE, before[1])
    assert_still_serving(broker)
