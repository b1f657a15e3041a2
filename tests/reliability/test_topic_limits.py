"""CreateTopics as an attack and as an edge case (issue 13, items 3 and 5).

- Limits are checked before anything is written: one request for 25,000 partitions is refused
  (POLICY_VIOLATION) without a file on disk, per topic, and the broker stays usable.
- The broker-wide partition limit (``log.max_partitions``) holds across topics, requests and
  CreatePartitions.
- Creation runs off the event loop: other connections are answered while it writes.
- Open descriptors do not grow with the partition count: with a descriptor limit far below the
  partition count, creating, producing, fetching and restarting (clean or kill -9) all work.
- Every valid Kafka topic name works and survives restarts (``.tmp`` suffixes, 219 to 249
  characters); errors are per topic and never name a server path.
"""

from __future__ import annotations

import select
from datetime import timedelta

import pytest
from confluent_kafka import Producer
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.create_partitions.v3.request import (
    CreatePartitionsRequest,
    CreatePartitionsTopic,
)
from kio.schema.create_topics.v7.request import CreatableTopic, CreateTopicsRequest

from tests.conftest import BrokerFactory
from tests.support import ops
from tests.support.broker import BrokerProcess
from tests.support.checker import Acked, check_topic
from tests.support.moto import wait_until
from tests.support.wire import Wire

pytestmark = pytest.mark.streamd_only

NONE = 0
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REQUEST = 42
POLICY_VIOLATION = 44


def creatable(name: str, partitions: int) -> CreatableTopic:
    return CreatableTopic(
        name=name, num_partitions=partitions, replication_factor=1, assignments=(), configs=()
    )


def create(
    wire: Wire, topics: list[tuple[str, int]], *, validate_only: bool = False
) -> dict[str, tuple[int, str | None]]:
    """{name: (error code, message)} of one CreateTopics request."""
    resp = wire.call(
        CreateTopicsRequest(
            topics=tuple(creatable(n, p) for n, p in topics),
            timeout=timedelta(seconds=60),
            validate_only=validate_only,
        )
    )
    assert len(resp.topics) == len(topics), resp
    return {t.name: (t.error_code, t.error_message) for t in resp.topics}


def grow(wire: Wire, name: str, count: int) -> tuple[int, str | None]:
    resp = wire.call(
        CreatePartitionsRequest(
            topics=(CreatePartitionsTopic(name=name, count=count, assignments=None),),
            timeout=timedelta(seconds=60),
            validate_only=False,
        )
    )
    (result,) = resp.results
    return result.error_code, result.error_message


def produce_each(
    bootstrap: str, partitions: dict[str, int], copies: int = 1
) -> dict[str, list[Acked]]:
    """``copies`` records to every partition of every topic; their acknowledgements."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20})
    acked: dict[str, list[Acked]] = {t: [] for t in partitions}

    def delivered(err, msg) -> None:  # noqa: ANN001
        assert err is None, err
        acked[msg.topic()].append(Acked(msg.partition(), msg.offset(), msg.value()))

    for topic, count in partitions.items():
        for p in range(count):
            for i in range(copies):
                value = b"%s-%d-%d" % (topic[:20].encode(), p, i)
                producer.produce(topic, value=value, partition=p, on_delivery=delivered)
    assert producer.flush(60) == 0
    return acked


def assert_no_server_path(broker: BrokerProcess, message: str | None) -> None:
    assert message is None or str(broker.data_dir.parent) not in message, message


def test_a_huge_create_topics_is_refused_before_anything_is_written(
    broker_factory: BrokerFactory, topic_name: str
) -> None:
    broker = broker_factory()
    huge, small = f"{topic_name}-huge", f"{topic_name}-small"
    with Wire(broker.address, timeout=60) as wire:
        result = create(wire, [(huge, 25_000), (small, 2)])
        code, message = result[huge]
        assert code == POLICY_VIOLATION, result
        assert message is not None and "limit" in message, message
        assert_no_server_path(broker, message)
        assert result[small][0] == NONE, result
        assert create(wire, [(huge, 100_001)])[huge][0] == INVALID_PARTITIONS
        duplicate = create(wire, [(f"{topic_name}-x", 1), (f"{topic_name}-x", 1)])
        assert duplicate[f"{topic_name}-x"][0] == INVALID_REQUEST
    assert not (broker.topics_dir / huge).exists()
    broker.restart()
    names = set(ops.admin(broker.bootstrap).list_topics(timeout=15).topics)
    assert small in names and huge not in names


def test_the_partition_limit_holds_across_topics_requests_and_growth(
    broker_factory: BrokerFactory, topic_name: str
) -> None:
    """The limit counts every partition on the broker (its own topics too)."""
    broker = broker_factory({"log.max_partitions": "100"})
    topics = ops.admin(broker.bootstrap).list_topics(timeout=15).topics
    existing = sum(len(t.partitions) for t in topics.values())
    room = 100 - existing
    assert room > 30, existing
    a, b, c = (f"{topic_name}-{x}" for x in "abc")
    with Wire(broker.address) as wire:
        assert create(wire, [(a, room - 15)])[a][0] == NONE
        result = create(wire, [(b, 10), (c, 10)])
        assert result[b][0] == NONE and result[c][0] == POLICY_VIOLATION, result
        assert create(wire, [(c, 6)], validate_only=True)[c][0] == POLICY_VIOLATION
        assert create(wire, [(c, 5)], validate_only=True)[c][0] == NONE
        assert create(wire, [(c, 6)])[c][0] == POLICY_VIOLATION
        assert grow(wire, a, room - 15 + 6)[0] == POLICY_VIOLATION
        assert grow(wire, a, room - 15 + 5)[0] == NONE
    assert not (broker.topics_dir / c).exists()
    meta = ops.admin(broker.bootstrap).list_topics(timeout=15).topics
    assert len(meta[a].partitions) == room - 10 and len(meta[b].partitions) == 10
    assert sum(len(t.partitions) for t in meta.values()) == 100


def test_creation_runs_off_the_event_loop(broker_factory: BrokerFactory, topic_name: str) -> None:
    """While a CreateTopics of 3,000 partitions is being written, another connection is
    answered; on the event loop it would wait until every partition exists."""
    broker = broker_factory()
    with Wire(broker.address, timeout=120) as slow, Wire(broker.address) as other:
        slow.send(
            slow.request_bytes(
                CreateTopicsRequest(
                    topics=(creatable(topic_name, 3000),),
                    timeout=timedelta(seconds=60),
                    validate_only=False,
                )
            )
        )
        first = broker.topics_dir / topic_name / "0"
        wait_until("the first partition directory", first.exists, timeout=30, interval=0.005)
        answer = other.call(
            ApiVersionsRequest(client_software_name="t", client_software_version="1")
        )
        assert answer.error_code == NONE
        readable, _, _ = select.select([slow.sock], [], [], 0)
        assert not readable, "CreateTopics was answered before a request sent after it started"
        response = slow.decode(CreateTopicsRequest, slow.read_frame())
        assert [t.error_code for t in response.topics] == [NONE]


def test_descriptors_do_not_grow_with_partitions(
    broker_factory: BrokerFactory, topic_name: str
) -> None:
    """600 partitions under a limit of 256 open files: create, produce to every partition,
    read every partition, stop, start, kill -9, start. The broker must write nothing it cannot
    open again."""
    broker = broker_factory(start=False)
    broker.max_open_files = 256
    broker.start()
    partitions = 600
    ops.create_topic(broker.bootstrap, topic_name, partitions)
    acked = produce_each(broker.bootstrap, {topic_name: partitions})[topic_name]
    assert len(acked) == partitions
    for restart in (broker.restart, lambda: broker.restart(hard=True)):
        restart()
        report = check_topic(broker.bootstrap, topic_name, partitions, acked)
        assert report.ok, report.summary()
    assert "Too many open files" not in broker.log_text()


def test_every_valid_topic_name_works_and_survives_restarts(
    broker_factory: BrokerFactory, topic_name: str
) -> None:
    """Names ending in ``.tmp`` (they used to vanish on restart) and of 219 to 249 characters
    (a staging directory named after them used to exceed NAME_MAX), created in one request
    with an invalid name among them: the answer is per topic."""
    long = topic_name + "-" + "n" * 249
    names = [topic_name + ".tmp", topic_name + "-x.tmp", long[:219], long[:230], long[:249]]
    broker = broker_factory()
    with Wire(broker.address) as wire:
        result = create(wire, [(names[0], 1), ("bad/name", 1), *((n, 2) for n in names[1:])])
    assert result.pop("bad/name")[0] != NONE
    assert result == {n: (NONE, None) for n in names}, result
    acked = produce_each(broker.bootstrap, {n: 1 for n in names}, copies=3)
    for hard in (False, True):
        broker.restart(hard=hard)
        for name in names:
            report = check_topic(broker.bootstrap, name, 1, acked[name])
            assert report.ok and report.acknowledged == 3, (name, report.summary())
    with Wire(broker.address) as wire:
        again = create(wire, [(n, 1) for n in names])
    for name in names:
        code, message = again[name]
        assert code == TOPIC_ALREADY_EXISTS, (name, code)
        assert_no_server_path(broker, message)
