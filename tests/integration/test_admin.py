"""Admin APIs through confluent-kafka's AdminClient (librdkafka) against a real broker.

Topics, partitions, configs (AlterConfigs and IncrementalAlterConfigs), DescribeCluster,
DeleteRecords and ListOffsets, plus the error codes for invalid requests. Invalid topic names
are sent with raw CreateTopics requests so no client-side check can hide the broker's answer.

Consumers use manual assignment and producers run without idempotence: consumer groups and
InitProducerId arrive with the group coordinator.
"""

from __future__ import annotations

import time
import warnings
from datetime import timedelta

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    OffsetSpec,
    ResourceType,
)
from kio.schema.create_topics.v7.request import (
    CreatableTopic,
    CreateTopicsRequest,
)
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.list_offsets.v9.request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from kio.schema.types import BrokerId, TopicName
from kio.static.primitive import i8, i32, i64

from tests.support import ops
from tests.support.broker import BrokerProcess, target
from tests.support.wire import Wire

OFFSET_OUT_OF_RANGE = 1
INVALID_TOPIC_EXCEPTION = 17
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_CONFIG = 40


def describe(bootstrap: str, topic: str) -> dict[str, ConfigEntry]:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    client = ops.admin(bootstrap)
    result = client.describe_configs([resource], request_timeout=15)
    return result[resource].result(20)  # type: ignore[no-any-return]


def partitions_of(bootstrap: str, topic: str) -> list[int]:
    meta = ops.admin(bootstrap).list_topics(topic, timeout=15).topics[topic]
    assert meta.error is None, meta.error
    return sorted(meta.partitions)


def wait_until(predicate, timeout: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def error_code(exc: KafkaException) -> int:
    return int(exc.args[0].code())


def test_create_produce_delete_recreate(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 4)
    assert partitions_of(broker.bootstrap, topic_name) == [0, 1, 2, 3]
    assert ops.produce(broker.bootstrap, topic_name, [b"a", b"b"], partition=3) == [0, 1]
    if target() == "streamd":
        for p in range(4):
            assert (broker.topics_dir / topic_name / str(p)).is_dir()

    client = ops.admin(broker.bootstrap)
    futures = client.delete_topics([topic_name], request_timeout=15)
    futures[topic_name].result(20)
    listed = ops.admin(broker.bootstrap).list_topics(timeout=15).topics
    assert topic_name not in listed
    if target() == "streamd":
        assert wait_until(lambda: not (broker.topics_dir / topic_name).exists())

    ops.create_topic(broker.bootstrap, topic_name, 1)
    assert ops.watermarks(broker.bootstrap, topic_name) == (0, 0)
    assert ops.produce(broker.bootstrap, topic_name, [b"again"]) == [0]


def test_delete_unknown_topic(broker: BrokerProcess, topic_name: str) -> None:
    client = ops.admin(broker.bootstrap)
    futures = client.delete_topics([topic_name], request_timeout=15)
    with pytest.raises(KafkaException) as err:
        futures[topic_name].result(20)
    assert err.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_create_existing_topic(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 2)
    err = ops.create_topic_error(broker.bootstrap, topic_name, 2)
    assert err is not None and err.code() == TOPIC_ALREADY_EXISTS, err
    assert partitions_of(broker.bootstrap, topic_name) == [0, 1]


@pytest.mark.parametrize("name", ["..", ".", "a/b", "x" * 250, "a b", "tópico", "a\\b"], ids=repr)
def test_invalid_topic_name(broker: BrokerProcess, name: str) -> None:
    request = CreateTopicsRequest(
        topics=(
            CreatableTopic(
                name=name, num_partitions=1, replication_factor=1, assignments=(), configs=()
            ),
        ),
        timeout=timedelta(seconds=10),
        validate_only=False,
    )
    with Wire(broker.address) as wire:
        (result,) = wire.call(request).topics
    assert result.error_code == INVALID_TOPIC_EXCEPTION, result
    if target() == "streamd":
        topics = broker.topics_dir
        present = sorted(p.name for p in topics.iterdir()) if topics.exists() else []
        assert name not in present
        assert not (broker.data_dir / name).exists() or name in (".", "..")
        assert not (topics / "a").exists()


def test_unknown_config_key_on_create(broker: BrokerProcess, topic_name: str) -> None:
    err = ops.create_topic_error(broker.bootstrap, topic_name, 1, {"no.such.config": "1"})
    assert err is not None and err.code() == INVALID_CONFIG, err
    assert topic_name not in ops.admin(broker.bootstrap).list_topics(timeout=15).topics


def test_invalid_config_value_on_create(broker: BrokerProcess, topic_name: str) -> None:
    err = ops.create_topic_error(broker.bootstrap, topic_name, 1, {"retention.ms": "soon"})
    assert err is not None and err.code() == INVALID_CONFIG, err


def test_create_partitions(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 2)
    client = ops.admin(broker.bootstrap)
    client.create_partitions([NewPartitions(topic_name, 5)], request_timeout=15)[topic_name].result(
        20
    )
    assert partitions_of(broker.bootstrap, topic_name) == [0, 1, 2, 3, 4]
    assert ops.produce(broker.bootstrap, topic_name, [b"p4"], partition=4) == [0]
    assert ops.consume(broker.bootstrap, topic_name, 4)[0].value == b"p4"

    shrink = client.create_partitions([NewPartitions(topic_name, 3)], request_timeout=15)
    with pytest.raises(KafkaException) as err:
        shrink[topic_name].result(20)
    assert error_code(err.value) == INVALID_PARTITIONS


def test_describe_configs_defaults(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1, {"retention.ms": "86400000"})
    configs = describe(broker.bootstrap, topic_name)
    for key in (
        "cleanup.policy",
        "segment.bytes",
        "segment.ms",
        "retention.ms",
        "retention.bytes",
        "max.message.bytes",
        "message.timestamp.type",
    ):
        assert key in configs, f"{key} missing from DescribeConfigs"
    assert configs["retention.ms"].value == "86400000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["cleanup.policy"].value == "delete"
    assert configs["message.timestamp.type"].value == "CreateTime"
    assert configs["segment.bytes"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value


def test_alter_configs_replaces_the_whole_set(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1, {"max.message.bytes": "20000"})
    resource = ConfigResource(
        ResourceType.TOPIC, topic_name, set_config={"retention.ms": "3600000"}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = ops.admin(broker.bootstrap)
        futures = client.alter_configs([resource], request_timeout=15)
    futures[resource].result(20)
    configs = describe(broker.bootstrap, topic_name)
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["max.message.bytes"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["max.message.bytes"].value != "20000"


def test_incremental_alter_configs(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(
        broker.bootstrap, topic_name, 1, {"max.message.bytes": "20000", "retention.ms": "7200000"}
    )
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic_name,
        incremental_configs=[
            ConfigEntry("retention.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ],
    )
    client = ops.admin(broker.bootstrap)
    futures = client.incremental_alter_configs([resource])
    futures[resource].result(20)
    configs = describe(broker.bootstrap, topic_name)
    assert configs["retention.bytes"].value == "1048576"
    assert configs["max.message.bytes"].value == "20000"
    assert configs["retention.ms"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].value == "604800000"


def test_incremental_alter_unknown_key(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1)
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic_name,
        incremental_configs=[
            ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    client = ops.admin(broker.bootstrap)
    futures = client.incremental_alter_configs([resource])
    with pytest.raises(KafkaException) as err:
        futures[resource].result(20)
    assert error_code(err.value) == INVALID_CONFIG


def test_describe_cluster(broker: BrokerProcess) -> None:
    client = ops.admin(broker.bootstrap)
    cluster = client.describe_cluster(request_timeout=15).result(20)
    assert cluster.cluster_id
    assert len(cluster.nodes) == 1
    (node,) = cluster.nodes
    assert (node.host, node.port) == broker.address
    assert cluster.controller is not None and cluster.controller.id == node.id


def test_list_offsets_earliest_latest(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 2)
    tp = TopicPartition(topic_name, 1)

    def earliest_latest() -> tuple[int, int]:
        client = ops.admin(broker.bootstrap)
        early = client.list_offsets({tp: OffsetSpec.earliest()})[tp].result(20)
        late = client.list_offsets({tp: OffsetSpec.latest()})[tp].result(20)
        return early.offset, late.offset

    assert earliest_latest() == (0, 0)
    ops.produce(broker.bootstrap, topic_name, [b"x"] * 25, partition=1)
    assert earliest_latest() == (0, 25)
    assert ops.watermarks(broker.bootstrap, topic_name, 0) == (0, 0)


def test_list_offsets_max_timestamp(broker: BrokerProcess, topic_name: str) -> None:
    """KIP-734 (ListOffsets -3): the offset and timestamp of the record with the largest
    timestamp, which need not be the last one."""
    ops.create_topic(broker.bootstrap, topic_name, 1)
    tp = TopicPartition(topic_name, 0)
    client = ops.admin(broker.bootstrap)
    empty = client.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(20)
    assert (empty.offset, empty.timestamp) == (-1, -1)

    now = int(time.time() * 1000)
    stamps = [now - 5000, now - 4000, now + 60_000, now - 3000, now - 2000]
    prod = ops.producer(broker.bootstrap)
    for i, ts in enumerate(stamps):
        prod.produce(topic_name, value=b"v%d" % i, partition=0, timestamp=ts)
        assert prod.flush(15) == 0
    found = client.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(20)
    assert (found.offset, found.timestamp) == (2, now + 60_000)


def test_delete_records(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1)
    values = [f"v{i}".encode() for i in range(100)]
    ops.produce(broker.bootstrap, topic_name, values)
    client = ops.admin(broker.bootstrap)
    tp = TopicPartition(topic_name, 0, 40)
    deleted = client.delete_records([tp], request_timeout=15)[tp].result(20)
    assert deleted.low_watermark == 40
    assert ops.watermarks(broker.bootstrap, topic_name) == (40, 100)

    c = ops.consumer(broker.bootstrap, **{"auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic_name, 0, 10)])
        errors = []
        deadline = time.monotonic() + 15
        while not errors and time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is not None:
                assert msg.error() is not None, f"read offset {msg.offset()} below the start"
                errors.append(msg.error())
    finally:
        c.close()
    assert errors, "no error consuming below the log start offset"
    assert errors[0].code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE)

    c = ops.consumer(broker.bootstrap, **{"auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic_name, 0, 10)])
        first = None
        deadline = time.monotonic() + 15
        while first is None and time.monotonic() < deadline:
            first = c.poll(1.0)
    finally:
        c.close()
    assert first is not None and first.error() is None
    assert (first.offset(), first.value()) == (40, b"v40")

    fetch = FetchRequest(
        max_wait=timedelta(milliseconds=100),
        min_bytes=1,
        topics=(
            FetchTopic(
                topic=topic_name,
                partitions=(
                    FetchPartition(partition=0, fetch_offset=10, partition_max_bytes=1 << 20),
                ),
            ),
        ),
        forgotten_topics_data=(),
    )
    with Wire(broker.address) as wire:
        (part,) = wire.call(fetch).responses[0].partitions
    assert (part.error_code, part.log_start_offset, part.high_watermark) == (
        OFFSET_OUT_OF_RANGE,
        40,
        100,
    )
    assert part.records == b"", "an error partition must carry an empty, not null, record set"

    assert ops.produce(broker.bootstrap, topic_name, [b"next"]) == [100]


def test_list_offsets_v9_serves_earliest_local_and_latest_tiered(
    broker: BrokerProcess, topic_name: str
) -> None:
    """-4 (earliest local, KIP-405) and -5 (latest tiered, KIP-1005) need ListOffsets v8/v9;
    an untiered partition has nothing tiered (-1)."""
    ops.create_topic(broker.bootstrap, topic_name, 1)
    ops.produce(broker.bootstrap, topic_name, [b"z"] * 10)
    client = ops.admin(broker.bootstrap)
    tp = TopicPartition(topic_name, 0, 4)
    client.delete_records([tp], request_timeout=15)[tp].result(20)
    request = ListOffsetsRequest(
        replica_id=BrokerId(-1),
        isolation_level=i8(0),
        topics=(
            ListOffsetsTopic(
                name=TopicName(topic_name),
                partitions=tuple(
                    ListOffsetsPartition(partition_index=i32(0), timestamp=i64(spec))
                    for spec in (-2, -4, -5, -1)
                ),
            ),
        ),
    )
    with Wire(broker.address) as wire:
        (topic,) = wire.call(request).topics
    assert [(p.error_code.value, p.offset) for p in topic.partitions] == [
        (0, 4),
        (0, 4),
        (0, -1),
        (0, 10),
    ]
