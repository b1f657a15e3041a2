"""Idempotent producers: retries after a cut connection never duplicate a record.

The broker advertises the proxy's address, so every client connection goes through a proxy
that the test resets while the producer has requests in flight.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer
from kio.schema.init_producer_id.v4.request import InitProducerIdRequest
from kio.schema.list_offsets.v7.request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

from tests.support.broker import free_port
from tests.support.ops import consume, create_topic
from tests.support.proxy import TcpProxy
from tests.support.wire import Wire
from tests.unit.log.batches import simple_batch

pytestmark = pytest.mark.streamd_only


def produce_request(topic: str, batch: bytes) -> ProduceRequest:
    import datetime

    return ProduceRequest(
        acks=-1,
        timeout=datetime.timedelta(seconds=10),
        topic_data=(
            TopicProduceData(
                name=topic, partition_data=(PartitionProduceData(index=0, records=batch),)
            ),
        ),
    )


def latest(wire: Wire, topic: str) -> int:
    resp = wire.call(
        ListOffsetsRequest(
            replica_id=-1,
            isolation_level=0,
            topics=(ListOffsetsTopic(name=topic, partitions=(
                ListOffsetsPartition(partition_index=0, timestamp=-1),)),),
        )
    )
    return resp.topics[0].partitions[0].offset


def test_replayed_batch_is_not_appended_twice(broker, topic_name) -> None:  # noqa: ANN001
    create_topic(broker.bootstrap, topic_name, 1)
    import datetime

    with Wire(broker.address) as wire:
        init = wire.call(InitProducerIdRequest(transactional_id=None,
                                               transaction_timeout=datetime.timedelta(0)))
        assert init.error_code == 0 and init.producer_id >= 0
        pid, epoch = init.producer_id, init.producer_epoch
        b0 = simple_batch(3, producer_id=pid, producer_epoch=epoch, base_sequence=0)
        first = wire.call(produce_request(topic_name, b0))
        again = wire.call(produce_request(topic_name, b0))
        p1 = first.responses[0].partition_responses[0]
        p2 = again.responses[0].partition_responses[0]
        assert p1.error_code == 0 and p2.error_code == 0
        assert p1.base_offset == p2.base_offset == 0
        assert latest(wire, topic_name) == 3
        gap = simple_batch(1, producer_id=pid, producer_epoch=epoch, base_sequence=7)
        out = wire.call(produce_request(topic_name, gap)).responses[0].partition_responses[0]
        assert out.error_code == 45  # OUT_OF_ORDER_SEQUENCE_NUMBER
        assert latest(wire, topic_name) == 3


def test_cut_connections_cause_no_duplicates(broker_factory, topic_name) -> None:  # noqa: ANN001
    proxy_port = free_port()
    broker = broker_factory({"kafka.advertised": f"127.0.0.1:{proxy_port}"})
    proxy = TcpProxy(broker.address, port=proxy_port)
    try:
        bootstrap = f"127.0.0.1:{proxy_port}"
        create_topic(bootstrap, topic_name, 1)
        total = 30000
        prod = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 5, "batch.num.messages": 200,
                         "max.in.flight.requests.per.connection": 5, "log_level": 0})
        errors: list[str] = []
        stop = threading.Event()

        def cutter() -> None:
            while not stop.is_set():
                time.sleep(0.05)
                proxy.drop_next_response.set()

        thread = threading.Thread(target=cutter, daemon=True)
        thread.start()
        for i in range(total):
            prod.produce(topic_name, value=b"%08d" % i, partition=0,
                         on_delivery=lambda err, msg: err and errors.append(str(err)))
            if i % 100 == 0:
                prod.poll(0.01)
        stop.set()
        thread.join()
        assert prod.flush(60) == 0
        assert not errors, errors[:3]
        assert proxy.cuts >= 5, f"only {proxy.cuts} responses were dropped"
        got = consume(bootstrap, topic_name, 0, 0)
        values = [m.value for m in got]
        assert len(values) == total, f"{len(values)} records for {total} produced"
        assert values == [b"%08d" % i for i in range(total)]
    finally:
        proxy.close()
