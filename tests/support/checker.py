"""The one durability checker of the fault-injection tests (and of ``bench/soak.py``).

A :class:`LoadProducer` writes flat out (librdkafka, acks=all, idempotent by default) records
whose values are unique (``<tag>:<sequence>|`` plus padding) to every partition of a topic,
and keeps each acknowledgement: partition, offset, value. Faults happen meanwhile (SIGTERM,
kill -9, a misbehaving bucket, a full disk); the producer rides through them, retrying what
was not acknowledged. Then :func:`check_topic` reads every partition back from its earliest
offset and compares: every acknowledged record must be read back exactly once, at the offset
it was acknowledged with, and offsets must be dense.

The :class:`Report` counts what a test asserts on and what a soak prints, per fault:

- ``acknowledged``: delivery reports that said success;
- ``lost``: acknowledged values found nowhere;
- ``duplicated``: extra copies of acknowledged values (an idempotent producer must have none);
- ``moved``: acknowledged values found, but not at their acknowledged offset (another record
  holds that offset, or the value sits elsewhere).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

NO_GROUP = "streamd-checker-no-group"
RDKAFKA_LOG = logging.getLogger("rdkafka.checker")
RDKAFKA_LOG.setLevel(logging.CRITICAL)
"""librdkafka's own log lines (connection refused while a broker restarts, ...): captured by
pytest like any log, instead of flooding stderr."""


@dataclass(frozen=True)
class Acked:
    partition: int
    offset: int
    value: bytes


@dataclass
class Report:
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    moved: int = 0
    stored: int = 0
    """Records read back (acknowledged or not)."""
    gaps: list[str] = field(default_factory=list)
    """Partitions whose offsets are not dense from their start."""
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.moved or self.gaps)

    def add(self, other: Report) -> None:
        self.acknowledged += other.acknowledged
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.moved += other.moved
        self.stored += other.stored
        self.gaps += other.gaps
        self.examples += other.examples[: max(0, 10 - len(self.examples))]

    def summary(self) -> str:
        text = (
            f"acknowledged {self.acknowledged}, lost {self.lost}, duplicated {self.duplicated}, "
            f"moved {self.moved} (stored {self.stored})"
        )
        if self.gaps:
            text += f"; offset gaps: {self.gaps[:3]}"
        if self.examples:
            text += f"; e.g. {self.examples[:5]}"
        return text

    def as_dict(self) -> dict[str, int]:
        return {
            "acknowledged": self.acknowledged,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "moved": self.moved,
        }


class LoadProducer(threading.Thread):
    """Produces unique values round-robin over ``partitions`` until :meth:`stop`.

    ``acked`` grows with every successful delivery report; ``errors`` counts failed ones by
    error name; ``fatal`` holds a fatal producer error (an idempotent producer that had to
    give up, e.g. OUT_OF_ORDER_SEQUENCE_NUMBER), which no fault may cause.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: int,
        *,
        tag: str = "p",
        idempotent: bool = True,
        value_size: int = 100,
        **config: Any,
    ) -> None:
        super().__init__(daemon=True, name=f"load-{tag}")
        self.topic, self.partitions, self.tag = topic, partitions, tag
        self.padding = b"." * max(0, value_size - 24)
        self.config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": idempotent,
            "linger.ms": 2,
            "message.timeout.ms": 120_000,
            "queue.buffering.max.messages": 20_000,
            "reconnect.backoff.ms": 20,
            "reconnect.backoff.max.ms": 250,
            "retry.backoff.ms": 20,
            "socket.connection.setup.timeout.ms": 3000,
            "logger": RDKAFKA_LOG,
            **config,
        }
        self.acked: list[Acked] = []
        self.errors: Counter[str] = Counter()
        self.fatal: str | None = None
        self.sent = 0
        self.unflushed = 0
        self._stopping = threading.Event()
        self._running = threading.Event()
        self._running.set()

    @property
    def acked_count(self) -> int:
        return len(self.acked)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            self.acked.append(Acked(msg.partition(), msg.offset(), msg.value()))
        else:
            self.errors[err.name()] += 1
            if err.fatal():
                self.fatal = f"{err.name()}: {err.str()}"

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = f"{err.name()}: {err.str()}"

    def run(self) -> None:
        producer = Producer({**self.config, "error_cb": self._on_error})
        seq = 0
        try:
            while not self._stopping.is_set() and self.fatal is None:
                if not self._running.is_set():
                    producer.poll(0.02)
                    continue
                value = b"%s:%012d|" % (self.tag.encode(), seq) + self.padding
                try:
                    producer.produce(
                        self.topic,
                        value=value,
                        partition=seq % self.partitions,
                        on_delivery=self._on_delivery,
                    )
                except BufferError:
                    producer.poll(0.02)
                    continue
                except KafkaException as exc:  # a fatal error: the producer is unusable
                    self.fatal = self.fatal or str(exc)
                    break
                seq += 1
                producer.poll(0)
        finally:
            self.sent = seq
            try:
                self.unflushed = producer.flush(60)
            except KafkaException as exc:
                self.fatal = self.fatal or str(exc)
                self.unflushed = len(producer)

    def pause(self) -> None:
        """Produce no new records (those queued are still retried until acknowledged)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def wait_acked(self, count: int, timeout: float = 60.0) -> None:
        """Until at least ``count`` acknowledgements in total (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while self.acked_count < count:
            if self.fatal is not None:
                raise AssertionError(f"producer failed fatally: {self.fatal}")
            if time.monotonic() > deadline or not self.is_alive():
                raise AssertionError(
                    f"only {self.acked_count} of {count} records acknowledged "
                    f"(errors {dict(self.errors)})"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 90.0) -> None:
        self._stopping.set()
        self.join(timeout)
        if self.is_alive():
            raise AssertionError("the producer did not finish flushing")


def read_partitions(
    bootstrap: str, topic: str, partitions: list[int], *, timeout: float = 120.0
) -> dict[int, list[tuple[int, bytes | None]]]:
    """Every record of each partition from its earliest offset to its high watermark (as of
    the call), with one consumer: {partition: [(offset, value), ...]}."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": NO_GROUP,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "fetch.max.bytes": 16 << 20,
            "max.partition.fetch.bytes": 8 << 20,
            "logger": RDKAFKA_LOG,
        }
    )
    out: dict[int, list[tuple[int, bytes | None]]] = {p: [] for p in partitions}
    try:
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            for p in partitions
        }
        due = {p: high for p, (low, high) in marks.items() if high > low}
        consumer.assign([TopicPartition(topic, p, marks[p][0]) for p in due])
        deadline = time.monotonic() + timeout
        while due and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=1.0):
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                p = msg.partition()
                out[p].append((msg.offset(), msg.value()))
                if p in due and msg.offset() >= due[p] - 1:
                    del due[p]
        if due:
            p = next(iter(due))
            raise AssertionError(
                f"{topic}: {len(due)} partitions not read up to their high watermark, e.g. "
                f"p{p}: read {len(out[p])} records, high watermark {due[p]}"
            )
    finally:
        consumer.close()
    return out


def read_partition(
    bootstrap: str, topic: str, partition: int, *, timeout: float = 120.0
) -> list[tuple[int, bytes | None]]:
    """Every record from the earliest offset to the high watermark: (offset, value)."""
    return read_partitions(bootstrap, topic, [partition], timeout=timeout)[partition]


def check_records(
    acked: list[Acked], stored: dict[int, list[tuple[int, bytes | None]]]
) -> Report:
    """Compare acknowledgements with what the partitions hold (see the module docstring)."""
    report = Report(acknowledged=len(acked))
    where: dict[bytes, list[tuple[int, int]]] = {}
    at: dict[tuple[int, int], bytes | None] = {}
    for partition, records in stored.items():
        report.stored += len(records)
        offsets = [o for o, _ in records]
        if offsets and offsets != list(range(offsets[0], offsets[0] + len(offsets))):
            missing = sorted(set(range(offsets[0], offsets[-1] + 1)) - set(offsets))
            report.gaps.append(f"p{partition}: missing offsets {missing[:5]}")
        for offset, value in records:
            at[(partition, offset)] = value
            if value is not None:
                where.setdefault(value, []).append((partition, offset))
    for ack in acked:
        found = where.get(ack.value, [])
        if not found:
            report.lost += 1
            _example(report, f"lost {ack}: offset holds {at.get((ack.partition, ack.offset))!r}")
            continue
        if len(found) > 1:
            report.duplicated += len(found) - 1
            _example(report, f"duplicated {ack} at {found}")
        if (ack.partition, ack.offset) not in found:
            report.moved += 1
            _example(report, f"moved {ack} to {found}")
    return report


def check_topic(
    bootstrap: str, topic: str, partitions: int, acked: list[Acked]
) -> Report:
    return check_records(acked, read_partitions(bootstrap, topic, list(range(partitions))))


def _example(report: Report, text: str) -> None:
    if len(report.examples) < 10:
        report.examples.append(text[:200])
