"""What one Fetch can cost the broker (issue 13 item 4), over the raw protocol.

A partition named K times is answered once (Kafka builds a map: first position, last
parameters); a response is bounded by ``fetch.max.bytes`` whatever ``max_bytes`` asks; and a
client that pipelines fetches without reading the answers pins a bounded number of descriptors
(sendfile keeps a duplicate per record set until it is sent).
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from typing import Any

import pytest
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.fetch.v12.response import FetchResponse
from kio.serial import entity_reader

from streamd.log.batch import validate_produce_batches
from tests.support import ops
from tests.support.broker import BrokerProcess
from tests.support.wire import Wire, encode, frame, request_header

pytestmark = [pytest.mark.streamd_only]

MAX_PINNED_FILES = 1024
"""streamd.kafka.server.MAX_PINNED_FILES: descriptors one connection's unsent answers may hold."""


def fetch_request(
    topic: str, wanted: list[tuple[int, int, int]], max_bytes: int = 2**31 - 1
) -> FetchRequest:
    """``wanted``: (partition, offset, partition_max_bytes) in request order."""
    return FetchRequest(
        replica_id=-1,
        max_wait=timedelta(milliseconds=0),
        min_bytes=0,
        max_bytes=max_bytes,
        isolation_level=0,
        session_id=0,
        session_epoch=-1,
        topics=(
            FetchTopic(
                topic=topic,
                partitions=tuple(
                    FetchPartition(partition=p, fetch_offset=o, partition_max_bytes=m)
                    for p, o, m in wanted
                ),
            ),
        ),
        forgotten_topics_data=(),
        rack_id="",
    )


def offsets(records: bytes | None) -> list[int]:
    out: list[int] = []
    for h in validate_produce_batches(bytes(records), 1 << 30) if records else []:
        out.extend(range(h.base_offset, h.next_offset))
    return out


def fill(bootstrap: str, topic: str, partitions: int, records: int, size: int) -> None:
    """``records`` values of ``size`` bytes per partition, in batches of about 16 KiB."""
    prod = ops.producer(bootstrap, **{"batch.size": 16384, "linger.ms": 20})
    for p in range(partitions):
        for i in range(records):
            prod.produce(topic, os.urandom(size), partition=p)
            if i % 100 == 0:
                prod.poll(0)
    assert prod.flush(30) == 0


def test_a_partition_named_many_times_is_answered_once(
    broker: BrokerProcess, topic_name: str
) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1)
    fill(broker.bootstrap, topic_name, 1, 200, 1000)
    with Wire(broker.address) as w:
        answer = w.call(fetch_request(topic_name, [(0, 0, 1 << 20)] * 40))
        parts = [p for t in answer.responses for p in t.partitions]
        assert len(parts) == 1
        assert offsets(parts[0].records)[:1] == [0]
        # The last mention's offset wins, at the first mention's place.
        answer = w.call(fetch_request(topic_name, [(0, 0, 1 << 20), (0, 150, 1 << 20)]))
        [part] = [p for t in answer.responses for p in t.partitions]
        got = offsets(part.records)
        assert got and got[0] <= 150 <= got[-1] and 0 not in got


def test_fetch_max_bytes_caps_a_response(broker_factory: Any, topic_name: str) -> None:
    cap = 256 * 1024
    broker = broker_factory({"fetch.max.bytes": str(cap)})
    ops.create_topic(broker.bootstrap, topic_name, 4)
    fill(broker.bootstrap, topic_name, 4, 200, 1000)  # ~200 KB per partition
    with Wire(broker.address) as w:
        answer = w.call(
            fetch_request(topic_name, [(p, 0, 1 << 20) for p in range(4)], max_bytes=100 << 20)
        )
    sizes = [len(p.records or b"") for t in answer.responses for p in t.partitions]
    assert sizes[0] > 100_000  # the first partition is served in full...
    assert cap * 0.75 < sum(sizes) <= cap  # ...and the cap stops the rest at whole batches


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_unread_fetches_pin_bounded_descriptors(broker_factory: Any, topic_name: str) -> None:
    """Pipelined fetches whose answers are not read: each answer holds a duplicated descriptor
    (sendfile) until it is sent, so the broker must stop taking such requests, not run out."""
    broker = broker_factory()
    assert broker.proc is not None
    pid = broker.proc.pid
    ops.create_topic(broker.bootstrap, topic_name, 1)
    fill(broker.bootstrap, topic_name, 1, 400, 1000)
    request_type = FetchRequest
    count = 1500
    with Wire(broker.address) as warm:
        warm.call(fetch_request(topic_name, [(0, 0, 256 * 1024)]))
    baseline = _fds(pid)
    sock = socket.create_connection(broker.address, timeout=30)
    try:
        payload = b"".join(
            frame(
                encode(request_header(request_type, i + 1))
                + encode(fetch_request(topic_name, [(0, 0, 256 * 1024)]))
            )
            for i in range(count)
        )
        sock.sendall(payload)
        peak, last, stable_since = baseline, -1, time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() - stable_since < 1.5 and time.monotonic() < deadline:
            now = _fds(pid)
            peak = max(peak, now)
            if now != last:
                last, stable_since = now, time.monotonic()
            if peak - baseline > MAX_PINNED_FILES:
                break
            time.sleep(0.05)
        assert peak - baseline <= MAX_PINNED_FILES, f"{peak - baseline} descriptors pinned"
        # Reading the answers resumes the connection: all of them arrive, in order, whole.
        reader = sock.makefile("rb")
        header_type = FetchResponse.__header_schema__  # type: ignore[attr-defined]
        for i in range(count):
            size = int.from_bytes(reader.read(4), "big")
            body = reader.read(size)
            header, used = entity_reader(header_type)(body, 0)
            assert header.correlation_id == i + 1
            response, _ = entity_reader(FetchResponse)(body, used)
            [part] = response.responses[0].partitions
            assert offsets(part.records)[0] == 0
    finally:
        sock.close()
    deadline = time.monotonic() + 10
    while _fds(pid) > baseline + 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _fds(pid) <= baseline + 5, "descriptors leaked after the connection closed"
