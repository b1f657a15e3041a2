"""kill -9 of the broker in the middle of transactions: after restart every transaction's
outcome is atomic across its partitions, and the group offsets it committed agree with it.

1. Between AddPartitionsToTxn and EndTxn: the data and the offsets of two transactions are in
   the broker when it dies. After restart one producer commits (all its records and its offset
   become visible) and the other is gone, so its transaction times out and aborts (none of its
   records, no offset).
2. Between the decision and the markers: ``transaction.debug.exit_after_markers=1`` makes the
   broker exit right after the first of three COMMIT markers is durable. The restarted broker
   finishes the commit from its log before serving; the producer's retried EndTxn succeeds.
"""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from tests.support import ops
from tests.support.txn import drain, plain_produce, txn_producer

pytestmark = [pytest.mark.streamd_only]


def committed_offset(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    try:
        (tp,) = c.committed([TopicPartition(topic, 0)], timeout=15)
        return int(tp.offset)
    finally:
        c.close()


def open_transaction(bootstrap: str, tid: str, topic: str, source: str, group: str,
                     offset: int, **extra: object):  # noqa: ANN201
    """A transaction with records on three partitions and an offset, all sent to the broker."""
    p = txn_producer(bootstrap, tid, **extra)
    p.begin_transaction()
    for i in range(9):
        p.produce(topic, f"{tid}-{i}".encode(), partition=i % 3)
    assert p.flush(30) == 0
    meta = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        p.send_offsets_to_transaction(
            [TopicPartition(source, 0, offset)], meta.consumer_group_metadata(), 30
        )
    finally:
        meta.close()
    return p


def expected(tid: str) -> dict[int, list[bytes]]:
    return {p: [f"{tid}-{i}".encode() for i in range(p, 9, 3)] for p in range(3)}


def test_kill9_between_add_partitions_and_end_txn(broker_factory, topic_name) -> None:  # noqa: ANN001
    broker = broker_factory(
        {"transaction.abort.timed.out.transaction.cleanup.interval.ms": "200"}
    )
    source = f"{topic_name}-in"
    ops.create_topic(broker.bootstrap, topic_name, 3)
    ops.create_topic(broker.bootstrap, source, 1)
    plain_produce(broker.bootstrap, source, 0, [b"x"] * 20)
    survivor = open_transaction(broker.bootstrap, "survivor", topic_name, source, "g1", 7)
    orphan = open_transaction(broker.bootstrap, "orphan", topic_name, source, "g2", 11,
                              **{"transaction.timeout.ms": 4000})
    broker.restart(hard=True)
    del orphan  # its client never comes back: the transaction times out
    survivor.commit_transaction(60)
    out = drain(broker.bootstrap, topic_name, [0, 1, 2])
    assert out == expected("survivor")
    assert committed_offset(broker.bootstrap, "g1", source) == 7
    assert committed_offset(broker.bootstrap, "g2", source) < 0


def test_kill9_after_the_decision_before_every_marker(broker_factory, topic_name) -> None:  # noqa: ANN001
    broker = broker_factory({"transaction.debug.exit_after_markers": "1"})
    source = f"{topic_name}-in"
    ops.create_topic(broker.bootstrap, topic_name, 3)
    ops.create_topic(broker.bootstrap, source, 1)
    plain_produce(broker.bootstrap, source, 0, [b"x"] * 20)
    p = open_transaction(broker.bootstrap, "decided", topic_name, source, "g", 13)
    outcome: list[object] = []

    def commit() -> None:
        try:
            p.commit_transaction(90)
            outcome.append("committed")
        except KafkaException as exc:
            outcome.append(exc.args[0])

    committer = threading.Thread(target=commit)
    committer.start()
    assert broker.proc is not None
    assert broker.proc.wait(30) == 75, "the test hook should end the broker mid-markers"
    assert "exit_after_markers" in broker.log_text()
    broker.settings["transaction.debug.exit_after_markers"] = "-1"
    broker.start()
    committer.join(120)
    assert outcome == ["committed"]
    out = drain(broker.bootstrap, topic_name, [0, 1, 2])
    assert out == expected("decided")
    assert committed_offset(broker.bootstrap, "g", source) == 13
    assert "finishing 1 prepared transactions" in broker.log_text()
    assert drain(broker.bootstrap, topic_name, [0, 1, 2], "read_uncommitted") == out
