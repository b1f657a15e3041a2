"""Every version Kafka 3.9 accepts, spoken on a raw socket and decoded as that version.

Requests and answers go through kafka-python's hand-written ``kafka.protocol.old`` structs
(:meth:`tests.support.wire.Wire.call_old`), a codec independent of the Kafka 3.9 specs streamd
builds its retired versions from. The old message formats (Produce v0-v2, Fetch v0-v3) are
written and read with kafka-python's legacy record builder and reader.
"""

from __future__ import annotations

from typing import Any

import pytest
from kafka.protocol.old import (
    admin,
    api_versions,
    commit,
    fetch,
    find_coordinator,
    group,
    list_offsets,
    metadata,
    offset_for_leader_epoch,
    produce,
)
from kafka.record.legacy_records import LegacyRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords

from tests.support.broker import BrokerProcess
from tests.support.wire import Wire

NONE, CORRUPT_MESSAGE, UNKNOWN_TOPIC = 0, 2, 3
INVALID_TOPIC, UNSUPPORTED_VERSION, TOPIC_EXISTS = 17, 35, 36
SECURITY_DISABLED, INVALID_REQUEST = 54, 42

REQUIRED_AT_V0 = {
    0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 29, 30, 31,
    32, 33, 35, 36, 37, 42, 44, 47, 60,
}
"""Every API streamd serves; Kafka 3.9 accepts each of them from v0 (so does every other API
streamd may add: Kafka 3.9's floor is 0 for all client-facing APIs)."""


def message_set(magic: int, values: list[bytes], codec: int = 0) -> bytes:
    builder = LegacyRecordBatchBuilder(magic=magic, compression_type=codec, batch_size=1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=1_700_000_000_000 + i if magic else None, key=b"k", value=value)
    return bytes(builder.build())


def read_set(data: bytes) -> list[tuple[int, int | None, bytes]]:
    records = MemoryRecords(data)
    out = []
    while records.has_next():
        batch = records.next_batch()
        out += [(r.offset, r.timestamp, r.value) for r in batch]
    return out


def create(wire: Wire, name: str, configs: list[tuple[str, str]] = (), version: int = 0) -> Any:  # type: ignore[assignment]
    cls = admin.CreateTopicsRequest_v0 if version == 0 else admin.CreateTopicsRequest_v1
    kwargs: dict[str, Any] = {"topics": [(name, 1, 1, [], list(configs))], "timeout_ms": 5000}
    if version == 1:
        kwargs["validate_only"] = False
    return wire.call_old(cls(**kwargs))["topics"][0]


def produce_old(wire: Wire, version: int, topic: str, data: bytes) -> dict[str, Any]:
    request = getattr(produce, f"ProduceRequest_v{version}")(
        required_acks=1, timeout=5000, topics=[(topic, [(0, data)])]
    )
    answer = wire.call_old(request)
    return answer["responses"][0]["partition_responses"][0]  # type: ignore[no-any-return]


def fetch_old(wire: Wire, version: int, topic: str, offset: int, max_bytes: int = 1 << 20
              ) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "replica_id": -1, "max_wait_time": 100, "min_bytes": 1,
        "topics": [(topic, [(0, offset, max_bytes)])],
    }
    if version == 3:
        kwargs["max_bytes"] = 1 << 20
    answer = wire.call_old(getattr(fetch, f"FetchRequest_v{version}")(**kwargs))
    return answer["responses"][0]["partitions"][0]  # type: ignore[no-any-return]


def test_api_versions_v0_advertises_kafka_39_floors(broker: BrokerProcess) -> None:
    with Wire(broker.address) as wire:
        answer = wire.call_old(api_versions.ApiVersionsRequest_v0())
    assert answer["error_code"] == NONE
    floors = {k["api_key"]: k["min_version"] for k in answer["api_keys"]}
    assert floors.keys() >= REQUIRED_AT_V0
    assert {key: v for key, v in floors.items() if v != 0} == {}


@pytest.mark.parametrize("version", [0, 1, 2])
def test_produce_old_formats_then_fetch_every_old_version(
    broker: BrokerProcess, topic_name: str, version: int
) -> None:
    magic = 0 if version < 2 else 1
    with Wire(broker.address) as wire:
        assert create(wire, topic_name)["error_code"] == NONE
        plain = produce_old(wire, version, topic_name, message_set(magic, [b"a", b"b", b"c"]))
        assert (plain["error_code"], plain["base_offset"]) == (NONE, 0)
        gzipped = produce_old(wire, version, topic_name, message_set(magic, [b"d", b"e"], 1))
        assert (gzipped["error_code"], gzipped["base_offset"]) == (NONE, 3)
        for fetch_version in range(4):
            part = fetch_old(wire, fetch_version, topic_name, 1)
            assert (part["error_code"], part["high_watermark"]) == (NONE, 5)
            records = read_set(part["records"])
            assert [(o, v) for o, _, v in records] == [
                (1, b"b"), (2, b"c"), (3, b"d"), (4, b"e")
            ]
            stamps = {ts for _, ts, _ in records}
            if fetch_version < 2:
                assert stamps == {None}  # message format v0 has no timestamp
            elif magic == 1:
                base = 1_700_000_000_000
                assert [ts for _, ts, _ in records] == [base + 1, base + 2, base, base + 1]
            else:
                assert stamps == {-1}


def test_produce_v2_with_a_corrupt_message_writes_nothing(
    broker: BrokerProcess, topic_name: str
) -> None:
    data = bytearray(message_set(1, [b"x", b"y"]))
    data[-1] ^= 0xFF
    with Wire(broker.address) as wire:
        assert create(wire, topic_name)["error_code"] == NONE
        assert produce_old(wire, 2, topic_name, bytes(data))["error_code"] == CORRUPT_MESSAGE
        assert fetch_old(wire, 2, topic_name, 0)["high_watermark"] == 0


def test_old_fetch_of_modern_batches_and_the_byte_limit(
    broker: BrokerProcess, topic_name: str
) -> None:
    from confluent_kafka import Producer

    with Wire(broker.address) as wire:
        assert create(wire, topic_name)["error_code"] == NONE
    producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": "lz4",
                         "linger.ms": 50})
    for i in range(20):
        producer.produce(topic_name, value=b"%03d" % i + b"." * 100, key=b"k",
                         headers=[("h", b"lost in v1")])
    assert producer.flush(20) == 0
    with Wire(broker.address) as wire:
        part = fetch_old(wire, 3, topic_name, 5)
        records = read_set(part["records"])
        assert [o for o, _, _ in records] == list(range(5, 20))
        assert all(v.startswith(b"%03d" % o) for o, _, v in records)
        one = read_set(fetch_old(wire, 1, topic_name, 5, max_bytes=10)["records"])
        assert [o for o, _, _ in one] == [5]  # the first message is always whole


def test_downconversion_disabled_answers_unsupported_version(
    broker: BrokerProcess, topic_name: str
) -> None:
    with Wire(broker.address) as wire:
        created = create(wire, topic_name, [("message.downconversion.enable", "false")])
        assert created["error_code"] == NONE
        assert produce_old(wire, 2, topic_name, message_set(1, [b"a"]))["error_code"] == NONE
        for version in range(4):
            assert fetch_old(wire, version, topic_name, 0)["error_code"] == UNSUPPORTED_VERSION


def test_list_offsets_v0_old_style_offsets(broker: BrokerProcess, topic_name: str) -> None:
    with Wire(broker.address) as wire:
        assert create(wire, topic_name)["error_code"] == NONE

        def offsets(timestamp: int, max_num: int) -> list[int]:
            answer = wire.call_old(list_offsets.ListOffsetsRequest_v0(
                replica_id=-1, topics=[(topic_name, [(0, timestamp, max_num)])]))
            part = answer["topics"][0]["partitions"][0]
            assert part["error_code"] == NONE
            return part["old_style_offsets"]  # type: ignore[no-any-return]

        assert offsets(-1, 1) == [0]
        assert offsets(-2, 1) == [0]
        assert produce_old(wire, 2, topic_name, message_set(1, [b"a"] * 4))["error_code"] == NONE
        assert offsets(-1, 1) == [4]
        assert offsets(-2, 1) == [0]
        assert offsets(-1, 10) == [4, 0]
        assert offsets(0, 10) == []  # nothing was appended at or before the epoch
        missing = wire.call_old(list_offsets.ListOffsetsRequest_v0(
            replica_id=-1, topics=[(topic_name, [(7, -1, 1)])]))
        assert missing["topics"][0]["partitions"][0]["error_code"] == UNKNOWN_TOPIC


def test_offset_commit_v0_v1_and_offset_fetch_v0(broker: BrokerProcess, topic_name: str) -> None:
    group_id = f"old-{topic_name}"
    with Wire(broker.address) as wire:
        assert create(wire, topic_name)["error_code"] == NONE
        v0 = wire.call_old(commit.OffsetCommitRequest_v0(
            consumer_group=group_id, topics=[(topic_name, [(0, 42, "m0")])]))
        assert v0["topics"][0]["partitions"][0]["error_code"] == NONE
        fetched = wire.call_old(commit.OffsetFetchRequest_v0(
            consumer_group=group_id, topics=[(topic_name, [0])]))
        assert fetched["topics"][0]["partitions"][0]["committed_offset"] == 42
        assert fetched["topics"][0]["partitions"][0]["metadata"] == "m0"
        v1 = wire.call_old(commit.OffsetCommitRequest_v1(
            consumer_group=group_id, consumer_group_generation_id=-1, consumer_id="",
            topics=[(topic_name, [(0, 43, 1_600_000_000_000, "m1")])]))
        assert v1["topics"][0]["partitions"][0]["error_code"] == NONE
        v2 = wire.call_old(commit.OffsetCommitRequest_v2(
            consumer_group=group_id, consumer_group_generation_id=-1, consumer_id="",
            retention_time=3_600_000, topics=[(topic_name, [(0, 44, "m2")])]))
        assert v2["topics"][0]["partitions"][0]["error_code"] == NONE
        for request in (commit.OffsetFetchRequest_v0, commit.OffsetFetchRequest_v1):
            part = wire.call_old(request(consumer_group=group_id, topics=[(topic_name, [0])]))
            assert (part["topics"][0]["partitions"][0]["committed_offset"],
                    part["topics"][0]["partitions"][0]["metadata"]) == (44, "m2")


def test_offset_commit_v0_is_refused_while_the_group_has_members(
    broker: BrokerProcess, topic_name: str
) -> None:
    group_id = f"busy-{topic_name}"
    with Wire(broker.address) as wire:
        assert create(wire, topic_name)["error_code"] == NONE
        joined = wire.call_old(group.JoinGroupRequest_v0(
            group=group_id, session_timeout=10000, member_id="", protocol_type="consumer",
            group_protocols=[("range", b"\0\0\0\0\0\0")]))
        assert joined["error_code"] == NONE
        v0 = wire.call_old(commit.OffsetCommitRequest_v0(
            consumer_group=group_id, topics=[(topic_name, [(0, 1, "")])]))
        assert v0["topics"][0]["partitions"][0]["error_code"] != NONE
        wire.call_old(group.LeaveGroupRequest_v0(group=group_id, member_id=joined["member_id"]))


def test_group_lifecycle_at_v0(broker: BrokerProcess, topic_name: str) -> None:
    group_id = f"v0-{topic_name}"
    with Wire(broker.address) as wire:
        coordinator = wire.call_old(find_coordinator.FindCoordinatorRequest_v0(group_id))
        assert coordinator["error_code"] == NONE and coordinator["port"] == broker.kafka_port
        joined = wire.call_old(group.JoinGroupRequest_v0(
            group=group_id, session_timeout=10000, member_id="", protocol_type="consumer",
            group_protocols=[("range", b"meta")]))
        assert joined["error_code"] == NONE and joined["leader"] == joined["member_id"]
        member, generation = joined["member_id"], joined["generation_id"]
        synced = wire.call_old(group.SyncGroupRequest_v0(
            group=group_id, generation_id=generation, member_id=member,
            group_assignment=[(member, b"assigned")]))
        assert (synced["error_code"], synced["assignment"]) == (NONE, b"assigned")
        beat = wire.call_old(group.HeartbeatRequest_v0(
            group=group_id, generation_id=generation, member_id=member))
        assert beat["error_code"] == NONE
        listed = wire.call_old(admin.ListGroupsRequest_v0())
        assert (group_id, "consumer") in {(g["group_id"], g["protocol_type"])
                                          for g in listed["groups"]}
        described = wire.call_old(admin.DescribeGroupsRequest_v0(groups=[group_id]))
        desc = described["groups"][0]
        assert (desc["error_code"], desc["group_state"], desc["protocol_data"]) == (
            NONE, "Stable", "range")
        assert desc["members"][0]["member_assignment"] == b"assigned"
        left = wire.call_old(group.LeaveGroupRequest_v0(group=group_id, member_id=member))
        assert left["error_code"] == NONE


def test_metadata_v0_and_topic_admin_at_v0_v1(broker: BrokerProcess, topic_name: str) -> None:
    with Wire(broker.address) as wire:
        assert create(wire, topic_name, version=1)["error_code"] == NONE
        again = create(wire, topic_name, version=1)
        assert again["error_code"] == TOPIC_EXISTS and again["error_message"]
        meta = wire.call_old(metadata.MetadataRequest_v0(topics=[topic_name]))
        assert meta["brokers"][0]["port"] == broker.kafka_port
        assert [(t["error_code"], t["name"], len(t["partitions"])) for t in meta["topics"]] == [
            (NONE, topic_name, 1)
        ]
        everything = wire.call_old(metadata.MetadataRequest_v0(topics=[]))
        assert topic_name in {t["name"] for t in everything["topics"]}
        deleted = wire.call_old(admin.DeleteTopicsRequest_v0(topics=[topic_name], timeout=5000))
        assert deleted["responses"][0]["error_code"] == NONE
        gone = wire.call_old(metadata.MetadataRequest_v0(topics=[topic_name]))
        assert gone["topics"][0]["error_code"] == UNKNOWN_TOPIC


def test_describe_configs_v0(broker: BrokerProcess, topic_name: str) -> None:
    with Wire(broker.address) as wire:
        assert create(wire, topic_name, [("retention.ms", "1000")])["error_code"] == NONE
        node_id = wire.call_old(metadata.MetadataRequest_v0(topics=[]))["brokers"][0]["node_id"]
        answer = wire.call_old(admin.DescribeConfigsRequest_v0(
            resources=[(2, topic_name, ["retention.ms", "segment.ms"]), (4, str(node_id), None)]))
    topic, node = answer["results"]
    assert topic["error_code"] == NONE
    configs = {c["name"]: c for c in topic["configs"]}
    assert configs["retention.ms"]["value"] == "1000"
    assert configs["retention.ms"]["is_default"] is False
    assert configs["segment.ms"]["is_default"] is True
    assert node["error_code"] == NONE and node["configs"]


def test_offset_for_leader_epoch_v0_v1(broker: BrokerProcess, topic_name: str) -> None:
    with Wire(broker.address) as wire:
        assert create(wire, topic_name)["error_code"] == NONE
        assert produce_old(wire, 2, topic_name, message_set(1, [b"a", b"b"]))["error_code"] == NONE
        v0 = wire.call_old(offset_for_leader_epoch.OffsetForLeaderEpochRequest_v0(
            topics=[(topic_name, [(0, 0)])]))
        assert v0["topics"][0]["partitions"][0]["end_offset"] == 2
        v1 = wire.call_old(offset_for_leader_epoch.OffsetForLeaderEpochRequest_v1(
            topics=[(topic_name, [(0, 0)])]))
        part = v1["topics"][0]["partitions"][0]
        assert (part["error_code"], part["leader_epoch"], part["end_offset"]) == (NONE, 0, 2)


def test_acl_apis_v0_without_authorizer_answer_security_disabled(broker: BrokerProcess) -> None:
    with Wire(broker.address) as wire:
        for version in (0, 1):
            cls = admin.DescribeAclsRequest_v0 if version == 0 else admin.DescribeAclsRequest_v1
            kwargs: dict[str, Any] = {
                "resource_type": 2, "resource_name": None, "principal": None, "host": None,
                "operation": 1, "permission_type": 1,
            }
            if version:
                kwargs["resource_pattern_type_filter"] = 1
            described = wire.call_old(cls(**kwargs))
            assert described["error_code"] == SECURITY_DISABLED
            assert described["resources"] == []
        created = wire.call_old(admin.CreateAclsRequest_v0(
            creations=[(2, "t", "User:a", "*", 3, 3)]))
        assert created["results"][0]["error_code"] == SECURITY_DISABLED
        removed = wire.call_old(admin.DeleteAclsRequest_v0(filters=[(2, "t", None, None, 1, 1)]))
        assert removed["filter_results"][0]["error_code"] == SECURITY_DISABLED


def test_consumer_offsets_is_internal_and_reserved(broker: BrokerProcess) -> None:
    name = "__consumer_offsets"
    with Wire(broker.address) as wire:
        meta = wire.call_old(metadata.MetadataRequest_v1(topics=[name]))
        topic = meta["topics"][0]
        assert (topic["error_code"], topic["is_internal"], len(topic["partitions"])) == (
            NONE, True, 50)
        assert create(wire, name)["error_code"] == TOPIC_EXISTS
        deleted = wire.call_old(admin.DeleteTopicsRequest_v0(topics=[name], timeout=5000))
        assert deleted["responses"][0]["error_code"] == INVALID_REQUEST
        written = produce_old(wire, 2, name, message_set(1, [b"forged"]))
        assert written["error_code"] == INVALID_TOPIC
        altered = wire.call_old(admin.AlterConfigsRequest_v0(
            resources=[(2, name, [("retention.ms", "1")])], validate_only=False))
        assert altered["responses"][0]["error_code"] == INVALID_REQUEST


def test_internal_names_are_never_auto_created(broker_factory: Any) -> None:
    broker = broker_factory({"auto_create_topics": "true"})
    with Wire(broker.address) as wire:
        meta = wire.call_old(metadata.MetadataRequest_v1(topics=["__consumer_offsets"]))
        assert meta["topics"][0]["is_internal"] is True
        assert len(meta["topics"][0]["partitions"]) == 50
        probe = wire.call_old(metadata.MetadataRequest_v1(topics=["auto-created"]))
        assert probe["topics"][0]["error_code"] == NONE
        assert probe["topics"][0]["is_internal"] is False


def test_describe_log_dirs_v0(broker: BrokerProcess, topic_name: str) -> None:
    with Wire(broker.address) as wire:
        assert create(wire, topic_name)["error_code"] == NONE
        assert produce_old(wire, 2, topic_name, message_set(1, [b"a" * 100]))["error_code"] == NONE
        # every topic (kafka-python's v0 struct gets the partitions array of a filter wrong)
        answer = wire.call_old(admin.DescribeLogDirsRequest_v0(topics=None))
    result = answer["results"][0]
    assert result["error_code"] == NONE and result["log_dir"]
    sizes = {(t["name"], p["partition_index"]): p["partition_size"]
             for t in result["topics"] for p in t["partitions"]}
    assert sizes[(topic_name, 0)] > 100
