"""A transform reads its input as a read_committed consumer: records of an aborted
transaction in the input never reach the output; committed ones do, once."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from tests.support import ops
from tests.support.transforms import ENABLED, UPPER, caught_up, deploy, read_committed, wait_for

pytestmark = [pytest.mark.streamd_only]


def test_aborted_input_transactions_are_not_transformed(
    broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    broker = broker_factory(ENABLED)
    src, dst = f"{topic_name}-in", f"{topic_name}-out"
    ops.create_topic(broker.bootstrap, src, 1)
    ops.create_topic(broker.bootstrap, dst, 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "input-txn"})
    producer.init_transactions(30)
    for word, commit in [(b"one", True), (b"nope", False), (b"two", True), (b"never", False)]:
        producer.begin_transaction()
        producer.produce(src, value=word, partition=0)
        producer.produce(src, value=word + b"-again", partition=0)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)
            producer.abort_transaction(30)
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    plain.produce(src, value=b"three", partition=0)
    assert plain.flush(30) == 0
    deploy(broker, "upper", UPPER, src, [dst])
    # 5 data records committed or plain, 4 aborted, 4 markers: 13 offsets in all.
    wait_for(broker, "upper", "catch up", lambda d: caught_up(d, 13))
    got = [r.value for r in read_committed(broker.bootstrap, dst, 1)[0]]
    assert got == [b"ONE", b"ONE-AGAIN", b"TWO", b"TWO-AGAIN", b"THREE"]
