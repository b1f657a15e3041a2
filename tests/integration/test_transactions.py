"""Transactions end to end with confluent-kafka (librdkafka) and aiokafka producers and
consumers: commit and abort, read_committed against read_uncommitted, the last stable offset,
consume-transform-produce with ``send_offsets_to_transaction``, a fenced zombie, and a producer
killed with SIGKILL in the middle of its transaction.

Every "never sees" check reads up to a sentinel appended after the transactions (see
:mod:`tests.support.txn`), so it is deterministic rather than a timed wait.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from kio.schema.offset_fetch.v8.request import (
    OffsetFetchRequest,
    OffsetFetchRequestGroup,
    OffsetFetchRequestTopics,
)

from tests.support import ops
from tests.support.broker import REPO_ROOT
from tests.support.txn import (
    describe_transaction,
    drain,
    list_offsets,
    plain_produce,
    txn_producer,
    wait_for_state,
    wait_stable,
)
from tests.support.wire import Wire

pytestmark = [pytest.mark.streamd_only]


def values(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(n)]


def test_commit_abort_and_isolation_levels_with_confluent(broker, topic_name) -> None:  # noqa: ANN001
    ops.create_topic(broker.bootstrap, topic_name, 2)
    p = txn_producer(broker.bootstrap, f"{topic_name}-tx")
    sent: dict[str, dict[int, list[bytes]]] = {
        "committed": {0: [], 1: []},
        "aborted": {0: [], 1: []},
    }

    def txn(kind: str, n: int, commit: bool) -> None:
        p.begin_transaction()
        for i, v in enumerate(values(f"{kind}{n}", n)):
            p.produce(topic_name, v, partition=i % 2)
            sent["committed" if commit else "aborted"][i % 2].append(v)
        if commit:
            p.commit_transaction(30)
        else:
            assert p.flush(30) == 0  # the aborted records really are in the log
            p.abort_transaction(30)

    txn("c", 30, True)
    txn("a", 20, False)
    txn("c", 10, True)

    # An open transaction holds the last stable offset at its first record.
    p.begin_transaction()
    p.produce(topic_name, b"open", partition=0)
    assert p.flush(30) == 0
    plain_produce(broker.bootstrap, topic_name, 0, [b"plain-after-open"])
    hw = list_offsets(broker.address, topic_name, 0, isolation=0)
    lso = list_offsets(broker.address, topic_name, 0, isolation=1)
    assert lso < hw - 1, (lso, hw)
    p.commit_transaction(30)
    sent["committed"][0] += [b"open", b"plain-after-open"]
    # Stable once the marker is in: the LSO reaches the high watermark, past every record of
    # the transaction (the marker itself takes one more offset once it is durable).
    assert wait_stable(broker.address, topic_name, 0) in (hw, hw + 1)

    committed = drain(broker.bootstrap, topic_name, [0, 1], "read_committed")
    assert committed == sent["committed"]
    everything = drain(broker.bootstrap, topic_name, [0, 1], "read_uncommitted")
    for part in (0, 1):
        assert sorted(everything[part]) == sorted(
            sent["committed"][part] + sent["aborted"][part]
        )


def test_commit_and_abort_with_aiokafka(broker, topic_name) -> None:  # noqa: ANN001
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    ops.create_topic(broker.bootstrap, topic_name, 2)

    async def run() -> tuple[list[bytes], list[bytes]]:
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=topic_name)
        await p.start()
        try:
            async with p.transaction():
                for v in values("c", 10):
                    await p.send(topic_name, v, partition=int(v[-1:]) % 2)
            with pytest.raises(RuntimeError):
                async with p.transaction():
                    for v in values("a", 10):
                        await p.send(topic_name, v, partition=int(v[-1:]) % 2)
                    await p.flush()
                    raise RuntimeError("abort")
            async with p.transaction():
                await p.send(topic_name, b"last", partition=0)
        finally:
            await p.stop()
        seen: dict[str, list[bytes]] = {}
        for level in ("read_committed", "read_uncommitted"):
            c = AIOKafkaConsumer(
                topic_name, bootstrap_servers=broker.bootstrap, isolation_level=level,
                auto_offset_reset="earliest", group_id=None,
            )
            await c.start()
            got: list[bytes] = []
            try:
                deadline = time.monotonic() + 30
                while b"last" not in got:
                    assert time.monotonic() < deadline, got
                    batches = await c.getmany(timeout_ms=300)
                    got += [m.value for ms in batches.values() for m in ms]
            finally:
                await c.stop()
            seen[level] = got
        return seen["read_committed"], seen["read_uncommitted"]

    committed, uncommitted = asyncio.run(run())
    assert sorted(committed) == sorted([*values("c", 10), b"last"])
    assert sorted(uncommitted) == sorted([*values("c", 10), *values("a", 10), b"last"])
    # the sentinel read confirms nothing aborted is ever handed out after "last" either
    assert drain(broker.bootstrap, topic_name, [0, 1]) == {
        0: [v for v in [*values("c", 10), b"last"] if v == b"last" or int(v[-1:]) % 2 == 0],
        1: [v for v in values("c", 10) if int(v[-1:]) % 2 == 1],
    }


def _offset_fetch(address: tuple[str, int], group: str, topic: str, stable: bool) -> object:
    with Wire(address) as wire:
        resp = wire.call(
            OffsetFetchRequest(
                groups=(
                    OffsetFetchRequestGroup(
                        group_id=group,
                        topics=(OffsetFetchRequestTopics(name=topic, partition_indexes=(0, 1)),),
                    ),
                ),
                require_stable=stable,
            )
        )
    return {p.partition_index: (p.committed_offset, int(p.error_code))
            for p in resp.groups[0].topics[0].partitions}


def test_consume_transform_produce_with_confluent(broker, topic_name) -> None:  # noqa: ANN001
    source, sink, group = f"{topic_name}-in", f"{topic_name}-out", f"{topic_name}-g"
    ops.create_topic(broker.bootstrap, source, 2)
    ops.create_topic(broker.bootstrap, sink, 2)
    inputs = {p: values(f"in{p}", 60) for p in (0, 1)}
    for p, vs in inputs.items():
        plain_produce(broker.bootstrap, source, p, vs)
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False,
        "isolation.level": "read_committed", "auto.offset.reset": "earliest",
    })
    producer = txn_producer(broker.bootstrap, f"{topic_name}-ctp")
    consumer.subscribe([source])
    done = 0
    rounds = 0
    try:
        deadline = time.monotonic() + 60
        while done < 120:
            assert time.monotonic() < deadline, done
            msgs = [m for m in consumer.consume(num_messages=25, timeout=1) if m.error() is None]
            if not msgs:
                continue
            rounds += 1
            producer.begin_transaction()
            for m in msgs:
                producer.produce(sink, m.value().upper(), partition=m.partition())
            positions = consumer.position(consumer.assignment())
            producer.send_offsets_to_transaction(
                positions, consumer.consumer_group_metadata(), 30
            )
            if rounds == 2:  # one round fails: abort and rewind to the committed offsets
                assert producer.flush(30) == 0
                unstable = _offset_fetch(broker.address, group, source, stable=True)
                assert E_UNSTABLE in {code for _, code in unstable.values()}, unstable
                producer.abort_transaction(30)
                committed = consumer.committed(consumer.assignment(), timeout=15)
                for tp in committed:
                    consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))
                continue
            producer.commit_transaction(30)
            done += len(msgs)
    finally:
        consumer.close()
    out = drain(broker.bootstrap, sink, [0, 1])
    assert out == {p: [v.upper() for v in vs] for p, vs in inputs.items()}, "exactly once"
    offsets = _offset_fetch(broker.address, group, source, stable=True)
    assert offsets == {0: (60, 0), 1: (60, 0)}


E_UNSTABLE = 88


def test_consume_transform_produce_with_aiokafka(broker, topic_name) -> None:  # noqa: ANN001
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as ATP

    source, sink, group = f"{topic_name}-in", f"{topic_name}-out", f"{topic_name}-g"
    ops.create_topic(broker.bootstrap, source, 1)
    ops.create_topic(broker.bootstrap, sink, 1)
    inputs = values("x", 40)
    plain_produce(broker.bootstrap, source, 0, inputs)

    async def run() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False,
            isolation_level="read_committed", auto_offset_reset="earliest",
        )
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=sink)
        await consumer.start()
        await producer.start()
        tp = ATP(source, 0)
        consumer.assign([tp])
        try:
            taken = 0
            while taken < len(inputs):
                batch = (await consumer.getmany(tp, timeout_ms=1000, max_records=15)).get(tp, [])
                if not batch:
                    continue
                async with producer.transaction():
                    for m in batch:
                        await producer.send(sink, m.value.upper(), partition=0)
                    await producer.send_offsets_to_transaction(
                        {tp: batch[-1].offset + 1}, group
                    )
                taken += len(batch)
            assert await consumer.committed(tp) == len(inputs)
        finally:
            await producer.stop()
            await consumer.stop()

    asyncio.run(run())
    assert drain(broker.bootstrap, sink, [0]) == {0: [v.upper() for v in inputs]}


def test_zombie_producer_is_fenced(broker, topic_name) -> None:  # noqa: ANN001
    ops.create_topic(broker.bootstrap, topic_name, 2)
    tid = f"{topic_name}-tx"
    zombie = txn_producer(broker.bootstrap, tid)
    zombie.begin_transaction()
    for v in values("zombie", 6):
        zombie.produce(topic_name, v, partition=int(v[-1:]) % 2)
    assert zombie.flush(30) == 0
    successor = txn_producer(broker.bootstrap, tid)  # fences the zombie, aborting its txn
    successor.begin_transaction()
    successor.produce(topic_name, b"successor", partition=1)
    successor.commit_transaction(30)
    with pytest.raises(KafkaException) as raised:
        zombie.produce(topic_name, b"zombie-late", partition=0)
        zombie.commit_transaction(30)
    error = raised.value.args[0]
    assert error.fatal() or error.txn_requires_abort(), error
    assert drain(broker.bootstrap, topic_name, [0, 1]) == {0: [], 1: [b"successor"]}
    state = wait_for_state(broker.address, tid, "CompleteCommit")
    assert state.error_code == 0  # type: ignore[attr-defined]


KILLED_PRODUCER = textwrap.dedent(
    """
    import sys, time
    from confluent_kafka import Producer
    bootstrap, topic, tid = sys.argv[1:4]
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid,
                  "transaction.timeout.ms": 3000, "linger.ms": 5})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(50):
        p.produce(topic, b"doomed-%d" % i, partition=i % 2)
    assert p.flush(30) == 0
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_producer_killed_mid_transaction_is_aborted_after_its_timeout(
    broker_factory, topic_name  # noqa: ANN001
) -> None:
    broker = broker_factory(
        {"transaction.abort.timed.out.transaction.cleanup.interval.ms": "200"}
    )
    ops.create_topic(broker.bootstrap, topic_name, 2)
    tid = f"{topic_name}-tx"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_PRODUCER, broker.bootstrap, topic_name, tid],
        stdout=subprocess.PIPE, env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        assert describe_transaction(broker.address, tid).transaction_state == "Ongoing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    plain_produce(broker.bootstrap, topic_name, 0, [b"after"])
    # The sentinels are readable only once the coordinator has aborted the transaction.
    assert drain(broker.bootstrap, topic_name, [0, 1]) == {0: [b"after"], 1: []}
    state = wait_for_state(broker.address, tid, "CompleteAbort")
    assert state.producer_epoch == 1  # type: ignore[attr-defined]
    wait_stable(broker.address, topic_name, 0)
