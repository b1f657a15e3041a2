"""Everyday operations for the admin and reliability tests, through confluent-kafka.

Consumers use manual assignment under a placeholder group id that never joins a group
(librdkafka insists on a group.id); producers run with acks=all and no idempotence.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

NO_GROUP = "streamd-tests-no-group"


@dataclass(frozen=True)
class Message:
    offset: int
    key: bytes | None
    value: bytes | None


def admin(bootstrap: str) -> AdminClient:
    """Keep the returned client referenced until its futures resolve: librdkafka destroys
    the handle with the object and fails pending futures with _DESTROY."""
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topic(
    bootstrap: str, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
) -> None:
    client = admin(bootstrap)
    futures = client.create_topics(
        [NewTopic(name, partitions, 1, config=dict(config or {}))], request_timeout=15
    )
    futures[name].result(20)


def create_topic_error(
    bootstrap: str, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
) -> KafkaError | None:
    """The error the broker answers a CreateTopics with, or None on success."""
    try:
        create_topic(bootstrap, name, partitions, config)
    except KafkaException as exc:
        return exc.args[0]  # type: ignore[no-any-return]
    return None


def producer(bootstrap: str, **extra: object) -> Producer:
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": False,
        "linger.ms": 2,
    }
    config.update(extra)
    return Producer(config)


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes],
    partition: int = 0,
    *,
    flush_each: bool = False,
) -> list[int]:
    """Produce `values` in order; returns their acknowledged offsets. With `flush_each`,
    every record is its own batch (and its own request)."""
    prod = producer(bootstrap)
    values = list(values)
    offsets: list[int | None] = [None] * len(values)
    errors: list[str] = []

    def on_delivery(index: int):  # noqa: ANN202
        def callback(err, msg) -> None:  # noqa: ANN001
            if err is not None:
                errors.append(f"{index}: {err}")
            else:
                offsets[index] = msg.offset()

        return callback

    for i, value in enumerate(values):
        prod.produce(
            topic, value=value, key=str(i).encode(), partition=partition, on_delivery=on_delivery(i)
        )
        if flush_each:
            assert prod.flush(15) == 0
        else:
            prod.poll(0)
    assert prod.flush(30) == 0
    assert not errors, errors[:5]
    return [o for o in offsets if o is not None]


def consumer(bootstrap: str, **extra: object) -> Consumer:
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "group.id": NO_GROUP,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
    }
    config.update(extra)
    return Consumer(config)


def watermarks(bootstrap: str, topic: str, partition: int = 0) -> tuple[int, int]:
    """(log start offset, high watermark) via ListOffsets."""
    c = consumer(bootstrap)
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
    finally:
        c.close()
    return low, high


def consume(
    bootstrap: str, topic: str, partition: int = 0, start: int = 0, *, idle_s: float = 2.0
) -> list[Message]:
    """Everything from `start` up to the high watermark (read when the call begins)."""
    _, high = watermarks(bootstrap, topic, partition)
    out: list[Message] = []
    if start >= high:
        return out
    c = consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + 60
        while (not out or out[-1].offset < high - 1) and time.monotonic() < deadline:
            for msg in c.consume(num_messages=1000, timeout=idle_s):
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                out.append(Message(msg.offset(), msg.key(), msg.value()))
    finally:
        c.close()
    return out
