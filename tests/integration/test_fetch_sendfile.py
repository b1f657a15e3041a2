"""Fetch responses sent with sendfile (streamd.kafka.zerocopy), read by each real client.

Record sets of 64 KiB or more go from the segment file to the socket without being read by
the broker. Each client must get every record byte for byte, in order, from the start and
from the middle of the log, and the broker's sendfile counter must show that those bytes did
not take the copying path.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.support.broker import BrokerProcess
from tests.support.clients import DRIVERS, Rec
from tests.support.moto import metric, metrics_text

RECORDS = 3000
VALUE = 2000  # bytes: 6 MB in all, so fetches return megabytes of whole batches


def sendfile_bytes(broker: BrokerProcess) -> float:
    return metric(metrics_text(broker.admin_port), "streamd_fetch_sendfile_bytes_total")


@pytest.fixture(scope="module")
def filled(session_broker: BrokerProcess) -> tuple[str, list[Rec]]:
    topic = f"sendfile-{os.getpid()}"
    driver = DRIVERS["confluent"](session_broker.bootstrap)
    driver.create_topic(topic, 1)
    now = int(time.time() * 1000)
    records = [
        Rec(0, f"k{i}".encode(), os.urandom(VALUE), (("i", str(i).encode()),), now + i)
        for i in range(RECORDS)
    ]
    acks = driver.produce(topic, records, "none")
    assert [a.offset for a in acks] == list(range(RECORDS))
    return topic, records


@pytest.mark.parametrize("client", sorted(DRIVERS))
@pytest.mark.parametrize("start", [0, RECORDS // 2 + 7])
def test_clients_read_sendfile_responses_byte_for_byte(
    session_broker: BrokerProcess, filled: tuple[str, list[Rec]], client: str, start: int
) -> None:
    topic, records = filled
    before = sendfile_bytes(session_broker)
    got = DRIVERS[client](session_broker.bootstrap).consume(topic, 0, start, RECORDS - start)
    assert [g.offset for g in got] == list(range(start, RECORDS))
    for g, rec in zip(got, records[start:], strict=True):
        assert (g.key, g.value, g.headers) == (rec.key, rec.value, rec.headers), g.offset
    moved = sendfile_bytes(session_broker) - before
    assert moved >= (RECORDS - start) * VALUE * 0.9, f"only {moved} bytes went by sendfile"
