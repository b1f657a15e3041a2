"""One small driver per Kafka client library, all with the same shape.

Each driver creates a topic with the library's own admin client, produces records to explicit
partitions with explicit CreateTime timestamps (returning the acknowledged partition and
offset of each), reads a partition back from an offset, and resolves a timestamp to an offset.
Consumers use manual assignment with no group: streamd has no group coordinator yet, and
idempotence is off everywhere for the same reason (no InitProducerId).

Every driver opens and closes its clients inside each call, so nothing leaks between tests;
the aiokafka driver runs each call in its own event loop via `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
NO_GROUP = "streamd-tests-no-group"


@dataclass(frozen=True)
class Rec:
    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int


@dataclass(frozen=True)
class Got:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp: int


@dataclass(frozen=True)
class Ack:
    partition: int
    offset: int


class Driver(Protocol):
    name: str

    def create_topic(self, topic: str, partitions: int) -> None: ...

    def produce(self, topic: str, records: list[Rec], codec: str) -> list[Ack]: ...

    def consume(self, topic: str, partition: int, start: int, count: int) -> list[Got]: ...

    def offset_for_time(self, topic: str, partition: int, timestamp: int) -> int | None: ...


def _headers(raw: object) -> tuple[tuple[str, bytes | None], ...]:
    if not raw:
        return ()
    return tuple((str(k), None if v is None else bytes(v)) for k, v in raw)  # type: ignore[attr-defined]


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class ConfluentDriver:
    name = "confluent"

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def create_topic(self, topic: str, partitions: int) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(topic, partitions, 1)], request_timeout=15)
        futures[topic].result(20)

    def produce(self, topic: str, records: list[Rec], codec: str) -> list[Ack]:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "acks": "all",
                "enable.idempotence": False,
                "compression.type": codec,
                "linger.ms": 5,
                "message.timeout.ms": 30000,
            }
        )
        acks: list[Ack | None] = [None] * len(records)
        errors: list[str] = []

        def on_delivery(index: int):  # noqa: ANN202
            def callback(err, msg) -> None:  # noqa: ANN001
                if err is not None:
                    errors.append(f"record {index}: {err}")
                else:
                    acks[index] = Ack(msg.partition(), msg.offset())

            return callback

        for i, rec in enumerate(records):
            while True:
                try:
                    producer.produce(
                        topic,
                        value=rec.value,
                        key=rec.key,
                        partition=rec.partition,
                        timestamp=rec.timestamp,
                        headers=list(rec.headers),
                        on_delivery=on_delivery(i),
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        left = producer.flush(60)
        assert left == 0, f"{left} records still undelivered"
        assert not errors, errors[:5]
        assert all(a is not None for a in acks)
        return [a for a in acks if a is not None]

    def consumer_config(self) -> dict[str, object]:
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": NO_GROUP,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
        }

    def consume(self, topic: str, partition: int, start: int, count: int) -> list[Got]:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(self.consumer_config())
        out: list[Got] = []
        try:
            consumer.assign([TopicPartition(topic, partition, start)])
            deadline = _Deadline(60)
            while len(out) < count and deadline.left() > 0:
                for msg in consumer.consume(num_messages=1000, timeout=1.0):
                    if msg.error() is not None:
                        raise AssertionError(f"consumer error: {msg.error()}")
                    out.append(
                        Got(
                            msg.partition(),
                            msg.offset(),
                            msg.key(),
                            msg.value(),
                            _headers(msg.headers()),
                            msg.timestamp()[1],
                        )
                    )
        finally:
            consumer.close()
        return out

    def offset_for_time(self, topic: str, partition: int, timestamp: int) -> int | None:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(self.consumer_config())
        try:
            (tp,) = consumer.offsets_for_times([TopicPartition(topic, partition, timestamp)], 15)
        finally:
            consumer.close()
        assert tp.error is None, tp.error
        return None if tp.offset < 0 else tp.offset


class KafkaPythonDriver:
    name = "kafka-python"

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def create_topic(self, topic: str, partitions: int) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=15000)
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            admin.close()

    def produce(self, topic: str, records: list[Rec], codec: str) -> list[Ack]:
        from kafka import KafkaProducer

        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=False,
            compression_type=None if codec == "none" else codec,
            linger_ms=5,
        )
        try:
            futures = [
                producer.send(
                    topic,
                    value=rec.value,
                    key=rec.key,
                    headers=list(rec.headers),
                    partition=rec.partition,
                    timestamp_ms=rec.timestamp,
                )
                for rec in records
            ]
            producer.flush(60)
            metas = [f.get(timeout=30) for f in futures]
        finally:
            producer.close(timeout=10)
        return [Ack(m.partition, m.offset) for m in metas]

    def _consumer(self):  # noqa: ANN202
        from kafka import KafkaConsumer

        return KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
        )

    def consume(self, topic: str, partition: int, start: int, count: int) -> list[Got]:
        from kafka import TopicPartition

        consumer = self._consumer()
        tp = TopicPartition(topic, partition)
        out: list[Got] = []
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            deadline = _Deadline(60)
            while len(out) < count and deadline.left() > 0:
                for msgs in consumer.poll(timeout_ms=1000).values():
                    out += [
                        Got(m.partition, m.offset, m.key, m.value, _headers(m.headers), m.timestamp)
                        for m in msgs
                    ]
        finally:
            consumer.close()
        return out

    def offset_for_time(self, topic: str, partition: int, timestamp: int) -> int | None:
        from kafka import TopicPartition

        consumer = self._consumer()
        tp = TopicPartition(topic, partition)
        try:
            found = consumer.offsets_for_times({tp: timestamp})
        finally:
            consumer.close()
        hit = found.get(tp)
        return None if hit is None else hit.offset


class AiokafkaDriver:
    name = "aiokafka"

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def create_topic(self, topic: str, partitions: int) -> None:
        asyncio.run(self._create_topic(topic, partitions))

    async def _create_topic(self, topic: str, partitions: int) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            resp = await admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            await admin.close()
        errors = [t for t in resp.topic_errors if t[1] != 0]
        assert not errors, errors

    def produce(self, topic: str, records: list[Rec], codec: str) -> list[Ack]:
        return asyncio.run(self._produce(topic, records, codec))

    async def _produce(self, topic: str, records: list[Rec], codec: str) -> list[Ack]:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=False,
            compression_type=None if codec == "none" else codec,
            linger_ms=5,
        )
        await producer.start()
        try:
            futures = [
                await producer.send(
                    topic,
                    value=rec.value,
                    key=rec.key,
                    headers=list(rec.headers),
                    partition=rec.partition,
                    timestamp_ms=rec.timestamp,
                )
                for rec in records
            ]
            metas = await asyncio.wait_for(asyncio.gather(*futures), 60)
        finally:
            await producer.stop()
        return [Ack(m.partition, m.offset) for m in metas]

    def _consumer(self):  # noqa: ANN202
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
        )

    def consume(self, topic: str, partition: int, start: int, count: int) -> list[Got]:
        return asyncio.run(self._consume(topic, partition, start, count))

    async def _consume(self, topic: str, partition: int, start: int, count: int) -> list[Got]:
        from aiokafka import TopicPartition

        consumer = self._consumer()
        await consumer.start()
        tp = TopicPartition(topic, partition)
        out: list[Got] = []
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            deadline = _Deadline(60)
            while len(out) < count and deadline.left() > 0:
                batches = await consumer.getmany(timeout_ms=1000)
                for msgs in batches.values():
                    out += [
                        Got(m.partition, m.offset, m.key, m.value, _headers(m.headers), m.timestamp)
                        for m in msgs
                    ]
        finally:
            await consumer.stop()
        return out

    def offset_for_time(self, topic: str, partition: int, timestamp: int) -> int | None:
        return asyncio.run(self._offset_for_time(topic, partition, timestamp))

    async def _offset_for_time(self, topic: str, partition: int, timestamp: int) -> int | None:
        from aiokafka import TopicPartition

        consumer = self._consumer()
        await consumer.start()
        tp = TopicPartition(topic, partition)
        try:
            found = await consumer.offsets_for_times({tp: timestamp})
        finally:
            await consumer.stop()
        hit = found.get(tp)
        return None if hit is None else hit.offset


DRIVERS: dict[str, type[ConfluentDriver] | type[KafkaPythonDriver] | type[AiokafkaDriver]] = {
    d.name: d for d in (ConfluentDriver, KafkaPythonDriver, AiokafkaDriver)
}
