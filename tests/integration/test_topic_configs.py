"""Kafka's topic configs with real clients: accepted as Kafka accepts them, and enforced where
they mean something on one broker (codec, timestamp limits, min.insync.replicas).

Provisioning tools set the standard keys routinely (compression.type, delete.retention.ms,
flush.*, compaction tuning, message.format.version); a broker that refuses them breaks those
tools. A topic whose compression.type is not ``producer`` stores batches in that codec whatever
the producer used; every client library must still read them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    ResourceType,
)
from kafka.admin import KafkaAdminClient, NewTopic
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic

from streamd.log.batch import parse_header
from tests.support import ops
from tests.support.broker import BrokerProcess
from tests.support.clients import DRIVERS, Rec
from tests.support.wire import Wire

CODEC_IDS = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
PROVISIONED = {
    "compression.type": "lz4",
    "delete.retention.ms": "3600000",
    "flush.ms": "1000",
    "flush.messages": "10000",
    "min.cleanable.dirty.ratio": "0.2",
    "min.compaction.lag.ms": "1000",
    "max.compaction.lag.ms": "86400000",
    "file.delete.delay.ms": "30000",
    "message.format.version": "3.0-IV1",
    "message.downconversion.enable": "false",
    "unclean.leader.election.enable": "false",
    "segment.jitter.ms": "100",
    "segment.index.bytes": "1048576",
    "preallocate": "false",
    "message.timestamp.difference.max.ms": "86400000",
}


def describe(bootstrap: str, topic: str) -> dict[str, ConfigEntry]:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    client = ops.admin(bootstrap)
    return client.describe_configs([resource], request_timeout=15)[resource].result(20)  # type: ignore[no-any-return]


def test_provisioning_configs_are_accepted_and_described(
    broker: BrokerProcess, topic_name: str
) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1, PROVISIONED)
    configs = describe(broker.bootstrap, topic_name)
    for key, value in PROVISIONED.items():
        assert configs[key].value == value, key
        assert configs[key].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, key
        assert not configs[key].is_read_only
    assert configs["compression.zstd.level"].value == "3"
    assert configs["compression.zstd.level"].source == ConfigSource.DEFAULT_CONFIG.value

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        admin.create_topics(
            [
                NewTopic(
                    f"{topic_name}-kp",
                    1,
                    1,
                    topic_configs={"compression.type": "zstd", "flush.messages": "1"},
                )
            ]
        )
    finally:
        admin.close()
    assert describe(broker.bootstrap, f"{topic_name}-kp")["compression.type"].value == "zstd"


@pytest.mark.parametrize(
    "key, value",
    [
        ("compression.type", "LZ4"),
        ("compression.gzip.level", "12"),
        ("min.cleanable.dirty.ratio", "2"),
        ("message.format.version", "9.9"),
        ("log.retention.ms", "1000"),
    ],
)
def test_kafka_validation_refuses_what_kafka_refuses(
    broker: BrokerProcess, topic_name: str, key: str, value: str
) -> None:
    err = ops.create_topic_error(broker.bootstrap, topic_name, 1, {key: value})
    assert err is not None and err.code() == KafkaError.INVALID_CONFIG, err
    assert key in err.str()


def test_list_configs_take_append_and_subtract(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1)

    def alter(op: AlterConfigOpType, value: str) -> str:
        resource = ConfigResource(
            ResourceType.TOPIC,
            topic_name,
            incremental_configs=[ConfigEntry("cleanup.policy", value, incremental_operation=op)],
        )
        client = ops.admin(broker.bootstrap)
        client.incremental_alter_configs([resource])[resource].result(20)
        return str(describe(broker.bootstrap, topic_name)["cleanup.policy"].value)

    assert alter(AlterConfigOpType.APPEND, "compact") == "delete,compact"
    assert alter(AlterConfigOpType.SUBTRACT, "delete") == "compact"


def raw_batches(broker: BrokerProcess, topic: str, partition: int = 0) -> list[int]:
    """The codec of every batch the broker serves for the partition (a raw Fetch)."""
    request = FetchRequest(
        max_wait=timedelta(milliseconds=10),
        min_bytes=1,
        topics=(
            FetchTopic(
                topic=topic,
                partitions=(
                    FetchPartition(
                        partition=partition, fetch_offset=0, partition_max_bytes=1 << 24
                    ),
                ),
            ),
        ),
        forgotten_topics_data=(),
    )
    with Wire(broker.address) as wire:
        (part,) = wire.call(request).responses[0].partitions
    data = bytes(part.records or b"")
    codecs, pos = [], 0
    while pos < len(data):
        header = parse_header(data, pos)
        codecs.append(header.compression)
        pos += header.size
    return codecs


@pytest.fixture
def now_ms() -> Iterator[int]:
    yield int(time.time() * 1000)


@pytest.mark.parametrize("target", ["zstd", "lz4", "snappy", "gzip", "uncompressed"])
def test_the_broker_stores_the_topic_codec_and_every_client_reads_it(
    broker: BrokerProcess, topic_name: str, target: str, now_ms: int
) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1, {"compression.type": target})
    produced: list[Rec] = []
    for i, (driver, codec) in enumerate(
        (("confluent", "lz4"), ("kafka-python", "gzip"), ("aiokafka", "none"))
    ):
        records = [
            Rec(0, b"k%d" % n, f"{driver}-{n}-".encode() * 20, (("h", b"v"),), now_ms + n)
            for n in range(i * 100, i * 100 + 100)
        ]
        DRIVERS[driver](broker.bootstrap).produce(topic_name, records, codec)
        produced += records
    assert set(raw_batches(broker, topic_name)) == {CODEC_IDS[target]}
    for name, driver_type in DRIVERS.items():
        got = driver_type(broker.bootstrap).consume(topic_name, 0, 0, len(produced))
        assert [(g.key, g.value, g.headers, g.timestamp) for g in got] == [
            (r.key, r.value, r.headers, r.timestamp) for r in produced
        ], name


def test_producer_codec_is_kept_by_default(
    broker: BrokerProcess, topic_name: str, now_ms: int
) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1)
    records = [Rec(0, None, b"x" * 100, (), now_ms) for _ in range(50)]
    DRIVERS["confluent"](broker.bootstrap).produce(topic_name, records, "snappy")
    assert set(raw_batches(broker, topic_name)) == {CODEC_IDS["snappy"]}


def delivery_error(
    bootstrap: str, topic: str, timestamp: int | None, **conf: object
) -> KafkaError | None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": False, "retries": 0, **conf}
    )
    errors: list[KafkaError | None] = []
    producer.produce(
        topic,
        value=b"v",
        timestamp=timestamp or 0,
        on_delivery=lambda err, msg: errors.append(err),
    )
    assert producer.flush(20) == 0
    return errors[0]


def test_timestamp_limits_refuse_records_outside_the_window(
    broker: BrokerProcess, topic_name: str, now_ms: int
) -> None:
    ops.create_topic(
        broker.bootstrap,
        topic_name,
        1,
        {"message.timestamp.before.max.ms": "3600000", "message.timestamp.after.max.ms": "60000"},
    )
    old = delivery_error(broker.bootstrap, topic_name, now_ms - 7_200_000)
    assert old is not None and old.code() == KafkaError.INVALID_TIMESTAMP, old
    ahead = delivery_error(broker.bootstrap, topic_name, now_ms + 600_000)
    assert ahead is not None and ahead.code() == KafkaError.INVALID_TIMESTAMP, ahead
    assert delivery_error(broker.bootstrap, topic_name, now_ms) is None
    assert ops.watermarks(broker.bootstrap, topic_name) == (0, 1)


def test_min_insync_replicas_above_one_refuses_acks_all(
    broker: BrokerProcess, topic_name: str
) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1, {"min.insync.replicas": "2"})
    refused = delivery_error(broker.bootstrap, topic_name, None, acks="all")
    assert refused is not None and refused.code() == KafkaError.NOT_ENOUGH_REPLICAS, refused
    assert delivery_error(broker.bootstrap, topic_name, None, acks=1) is None
    assert ops.watermarks(broker.bootstrap, topic_name) == (0, 1)
