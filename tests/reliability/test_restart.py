"""Durability across restarts: every acknowledged record survives a clean stop (SIGTERM,
SIGINT) and a kill -9 in the middle of a produce stream, at the offset it was acknowledged
with, and offsets stay dense.

Producers run with acks=all and without idempotence; consumers use manual assignment:
idempotence and consumer groups arrive with the group coordinator.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import pytest
from confluent_kafka.admin import ConfigResource, ResourceType

from tests.conftest import BrokerFactory
from tests.support import ops

pytestmark = pytest.mark.streamd_only


def read_partition(bootstrap: str, topic: str, partition: int) -> dict[int, bytes | None]:
    messages = ops.consume(bootstrap, topic, partition)
    offsets = [m.offset for m in messages]
    assert offsets == list(range(len(offsets))), f"p{partition}: offsets not dense from 0"
    return {m.offset: m.value for m in messages}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_clean_stop_keeps_every_acknowledged_record(
    broker_factory: BrokerFactory, topic_name: str, sig: signal.Signals
) -> None:
    broker = broker_factory()
    ops.create_topic(broker.bootstrap, topic_name, 3, {"retention.ms": "123456789"})
    expected: dict[int, list[tuple[int, bytes]]] = {}
    for p in range(3):
        values = [f"p{p}-{i}".encode() * (1 + i % 7) for i in range(700)]
        offsets = ops.produce(broker.bootstrap, topic_name, values, partition=p)
        expected[p] = list(zip(offsets, values, strict=True))

    assert broker.stop(sig=sig) == 0, "broker did not exit 0 on " + sig.name
    broker.start()

    meta = ops.admin(broker.bootstrap).list_topics(topic_name, timeout=15).topics[topic_name]
    assert sorted(meta.partitions) == [0, 1, 2]
    client = ops.admin(broker.bootstrap)
    resource = ConfigResource(ResourceType.TOPIC, topic_name)
    configs = client.describe_configs([resource])[resource].result(20)
    assert configs["retention.ms"].value == "123456789"
    for p in range(3):
        assert sorted(read_partition(broker.bootstrap, topic_name, p).items()) == expected[p]
        assert ops.watermarks(broker.bootstrap, topic_name, p) == (0, 700)
    assert ops.produce(broker.bootstrap, topic_name, [b"after-restart"], partition=1) == [700]


class AckingProducer(threading.Thread):
    """Produces numbered values round-robin to `partitions` with acks=all until stopped,
    recording (partition, offset, value) for each delivery report that says success.

    Once `kill_after` records are acknowledged it calls `kill` itself, straight after handing
    the client a record, which is then still waiting for its linger, its request or its ack: the
    kill is mid-produce. (Deciding from another thread raced the stream: the check could land
    just after a delivery-report round had emptied the client's queue, nothing in flight.)"""

    def __init__(
        self, bootstrap: str, topic: str, partitions: int, kill_after: int, kill: Callable[[], None]
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.kill_after, self.kill = kill_after, kill
        self.acked: list[tuple[int, int, bytes]] = []
        self.failed = 0
        self.killed = threading.Event()
        self.stopping = threading.Event()

    def on_delivery(self, err, msg) -> None:  # noqa: ANN001
        if err is None:
            self.acked.append((msg.partition(), msg.offset(), msg.value()))
        else:
            self.failed += 1

    def run(self) -> None:
        producer = ops.producer(
            self.bootstrap,
            **{"linger.ms": 1, "message.timeout.ms": 4000, "queue.buffering.max.messages": 2000},
        )
        i = 0
        while not self.stopping.is_set():
            try:
                producer.produce(
                    self.topic,
                    value=f"value-{i:08d}".encode() + b"." * (i % 200),
                    partition=i % self.partitions,
                    on_delivery=self.on_delivery,
                )
                i += 1
            except BufferError:
                producer.poll(0.01)
                continue
            if not self.killed.is_set() and len(self.acked) >= self.kill_after:
                self.kill()
                self.killed.set()
            producer.poll(0)
        producer.flush(15)


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_kill9_mid_produce_loses_no_acknowledged_record(
    broker_factory: BrokerFactory, topic_name: str, fsync: str
) -> None:
    broker = broker_factory({"fsync": fsync})
    ops.create_topic(broker.bootstrap, topic_name, 2)
    producer = AckingProducer(broker.bootstrap, topic_name, 2, kill_after=4000, kill=broker.kill9)
    producer.start()
    killed = producer.killed.wait(60)
    assert killed, f"only {len(producer.acked)} acks in 60 s"

    producer.stopping.set()
    producer.join(30)
    assert not producer.is_alive()
    assert producer.failed > 0, "nothing was in flight at the kill: not a mid-produce kill"
    acked = list(producer.acked)

    broker.start()
    for p in range(2):
        stored = read_partition(broker.bootstrap, topic_name, p)
        mine = [(o, v) for part, o, v in acked if part == p]
        missing = [(o, v) for o, v in mine if stored.get(o) != v]
        assert not missing, (
            f"p{p}: {len(missing)} of {len(mine)} acknowledged records lost or changed, "
            f"first {missing[:3]}; partition holds {len(stored)}"
        )
        assert ops.produce(broker.bootstrap, topic_name, [b"next"], partition=p) == [len(stored)]
