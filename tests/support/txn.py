"""Helpers for transaction tests: transactional producers and reading a topic to its end.

``drain`` appends one plain (non-transactional, hence always committed) sentinel record to every
partition and reads until each sentinel arrives: everything before it has then been delivered,
so "a read_committed consumer never sees X" is a deterministic check, not a timed wait. For
read_committed, the sentinel arrives only once every transaction before it has ended.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from tests.support.wire import Wire

SENTINEL = b"--sentinel-"


def txn_producer(bootstrap: str, transactional_id: str, **extra: object) -> Producer:
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "transactional.id": transactional_id,
        "linger.ms": 5,
    }
    config.update(extra)
    p = Producer(config)
    p.init_transactions(30)
    return p


def plain_produce(bootstrap: str, topic: str, partition: int, values: Iterable[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1})
    errors: list[object] = []
    for v in values:
        p.produce(topic, v, partition=partition,
                  on_delivery=lambda err, _m: errors.append(err) if err else None)
    assert p.flush(30) == 0 and not errors, errors


def drain(
    bootstrap: str,
    topic: str,
    partitions: Iterable[int],
    isolation: str = "read_committed",
    timeout: float = 60.0,
) -> dict[int, list[bytes]]:
    """Every value of each partition from offset 0 up to a sentinel appended now (sentinels of
    earlier calls are left out too)."""
    parts = list(partitions)
    mine = SENTINEL + uuid.uuid4().hex.encode()
    for p in parts:
        plain_produce(bootstrap, topic, p, [mine])
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "txn-test-reader",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "auto.offset.reset": "earliest",
        }
    )
    out: dict[int, list[bytes]] = {p: [] for p in parts}
    done: set[int] = set()
    try:
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        deadline = time.monotonic() + timeout
        while len(done) < len(parts):
            assert time.monotonic() < deadline, f"sentinels not reached: {out}"
            for msg in c.consume(num_messages=500, timeout=0.5):
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                p = int(msg.partition() or 0)
                if p in done:
                    continue
                value = bytes(msg.value() or b"")
                if value == mine:
                    done.add(p)
                elif not value.startswith(SENTINEL):
                    out[p].append(value)
    finally:
        c.close()
    return out


def list_offsets(address: tuple[str, int], topic: str, partition: int, isolation: int) -> int:
    """ListOffsets latest (-1) under the isolation level (0 uncommitted, 1 committed)."""
    from kio.schema.list_offsets.v7.request import (
        ListOffsetsPartition,
        ListOffsetsRequest,
        ListOffsetsTopic,
    )

    with Wire(address) as wire:
        resp = wire.call(
            ListOffsetsRequest(
                replica_id=-1,
                isolation_level=isolation,
                topics=(
                    ListOffsetsTopic(
                        name=topic,
                        partitions=(ListOffsetsPartition(partition_index=partition, timestamp=-1),),
                    ),
                ),
            )
        )
    part = resp.topics[0].partitions[0]
    assert part.error_code == 0, part
    return int(part.offset)


def describe_transaction(address: tuple[str, int], transactional_id: str) -> object:
    from kio.schema.describe_transactions.v0.request import DescribeTransactionsRequest

    with Wire(address) as wire:
        resp = wire.call(DescribeTransactionsRequest(transactional_ids=(transactional_id,)))
    return resp.transaction_states[0]


def wait_for_state(address: tuple[str, int], transactional_id: str, state: str) -> object:
    """DescribeTransactions until the id reaches ``state``: EndTxn is answered once the
    decision is durable, the markers and the Complete record follow (as in Kafka)."""
    deadline = time.monotonic() + 30
    while True:
        described = describe_transaction(address, transactional_id)
        if described.transaction_state == state:  # type: ignore[attr-defined]
            return described
        assert time.monotonic() < deadline, described
        time.sleep(0.05)


def wait_stable(address: tuple[str, int], topic: str, partition: int) -> int:
    """ListOffsets until the last stable offset reaches the high watermark; returns it."""
    deadline = time.monotonic() + 30
    while True:
        lso = list_offsets(address, topic, partition, isolation=1)
        hw = list_offsets(address, topic, partition, isolation=0)
        if lso == hw:
            return lso
        assert time.monotonic() < deadline, (lso, hw)
        time.sleep(0.05)
