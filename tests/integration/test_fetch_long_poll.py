"""Fetch long polling: min_bytes and max_wait over the raw protocol.

A fetch that asks for more bytes than are ready waits; appends to any of its partitions
re-evaluate it, and the answer holds everything appended up to then, from the requested offsets.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic

from streamd.log.batch import validate_produce_batches
from tests.support import ops
from tests.support.broker import BrokerProcess
from tests.support.wire import Wire


def fetch(wire: Wire, topic: str, partitions: int, min_bytes: int, wait_ms: int) -> object:
    return wire.call(
        FetchRequest(
            replica_id=-1,
            max_wait=timedelta(milliseconds=wait_ms),
            min_bytes=min_bytes,
            max_bytes=64 << 20,
            isolation_level=0,
            session_id=0,
            session_epoch=-1,
            topics=(
                FetchTopic(
                    topic=topic,
                    partitions=tuple(
                        FetchPartition(partition=p, fetch_offset=0, partition_max_bytes=1 << 20)
                        for p in range(partitions)
                    ),
                ),
            ),
            forgotten_topics_data=(),
            rack_id="",
        )
    )


def offsets(records: bytes) -> list[int]:
    out: list[int] = []
    for h in validate_produce_batches(records, 1 << 30) if records else []:
        out.extend(range(h.base_offset, h.next_offset))
    return out


def test_long_poll_collects_appends_until_min_bytes(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 2)
    value = b"v" * 1000

    def trickle() -> None:
        for i in range(6):
            time.sleep(0.15)
            ops.produce(broker.bootstrap, topic_name, [value], partition=i % 2)

    producer = threading.Thread(target=trickle)
    with Wire(broker.address) as wire:
        started = time.monotonic()
        producer.start()
        resp = fetch(wire, topic_name, 2, min_bytes=4 * len(value), wait_ms=10_000)
        waited = time.monotonic() - started
    producer.join()
    parts = {p.partition_index: p for p in resp.responses[0].partitions}
    got = {i: offsets(parts[i].records or b"") for i in (0, 1)}
    assert all(p.error_code == 0 for p in parts.values())
    assert sum(len(v) for v in got.values()) >= 4, got
    assert all(v == list(range(len(v))) for v in got.values()), got
    assert waited < 9, "the fetch waited for max_wait although min_bytes was reached"


def test_long_poll_returns_empty_after_max_wait(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1)
    with Wire(broker.address) as wire:
        started = time.monotonic()
        resp = fetch(wire, topic_name, 1, min_bytes=1, wait_ms=300)
        waited = time.monotonic() - started
    part = resp.responses[0].partitions[0]
    assert part.error_code == 0 and not part.records and part.high_watermark == 0
    assert waited >= 0.25
