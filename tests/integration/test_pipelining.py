"""Requests pipelined on one connection take effect in the order they were sent, and their
responses come back in that order.

A producer without idempotence and with several requests in flight (the default of every
client) relies on this for per-partition order: Kafka handles one request per connection at
a time. Both requests below go out in a single write, so the broker sees them together.
Idempotent producers arrive with the group coordinator; these requests carry no producer id.
"""

from __future__ import annotations

from datetime import timedelta

from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

from tests.support import ops
from tests.support.batches import build_batch
from tests.support.broker import BrokerProcess
from tests.support.wire import Wire


def produce_request(topic: str, batches: dict[int, bytes]) -> ProduceRequest:
    return ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=timedelta(seconds=10),
        topic_data=(
            TopicProduceData(
                name=topic,
                partition_data=tuple(
                    PartitionProduceData(index=p, records=b) for p, b in batches.items()
                ),
            ),
        ),
    )


def test_pipelined_produce_keeps_request_order(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 3)
    first = produce_request(
        topic_name, {p: build_batch([f"first-p{p}".encode()]) for p in (0, 1, 2)}
    )
    second = produce_request(topic_name, {1: build_batch([b"second-p1"])})
    third = produce_request(topic_name, {p: build_batch([f"third-p{p}".encode()]) for p in (1, 2)})
    with Wire(broker.address) as wire:
        payload = b"".join(wire.request_bytes(r) for r in (first, second, third))
        wire.send(payload)
        frames = [wire.read_frame() for _ in range(3)]
    correlation_ids = [int.from_bytes(f[:4], "big") for f in frames]
    assert correlation_ids == [1, 2, 3], "responses out of request order"

    p1 = [m.value for m in ops.consume(broker.bootstrap, topic_name, 1)]
    p2 = [m.value for m in ops.consume(broker.bootstrap, topic_name, 2)]
    assert p1 == [b"first-p1", b"second-p1", b"third-p1"], "pipelined produces reordered"
    assert p2 == [b"first-p2", b"third-p2"]
