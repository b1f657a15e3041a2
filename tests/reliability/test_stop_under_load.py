"""SIGTERM and kill -9 while idempotent producers write flat out (acks=all, fsync=always).

Every acknowledged record must be read back exactly once at its acknowledged offset
(tests/support/checker.py), a SIGTERM must exit 0, and the idempotent producer must never hit
a fatal error (OUT_OF_ORDER_SEQUENCE_NUMBER after a restart was one symptom of acknowledged
writes that never reached the file). The longer version (more rounds, more kills, the same
checker) is ``bench/soak.py``.
"""

from __future__ import annotations

import pytest

from tests.conftest import BrokerFactory
from tests.support import ops
from tests.support.checker import LoadProducer, check_topic

pytestmark = pytest.mark.streamd_only

PARTITIONS = 4
ROUNDS = 3
ACKS_PER_ROUND = 4000


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_restarts_under_load_lose_no_acknowledged_record(
    broker_factory: BrokerFactory, topic_name: str, how: str
) -> None:
    broker = broker_factory({"fsync": "always"})
    ops.create_topic(broker.bootstrap, topic_name, PARTITIONS)
    loads = [
        LoadProducer(broker.bootstrap, topic_name, PARTITIONS, tag=f"p{i}") for i in range(2)
    ]
    for load in loads:
        load.start()
    for _ in range(ROUNDS):
        for load in loads:
            load.wait_acked(load.acked_count + ACKS_PER_ROUND)
        if how == "sigterm":
            assert broker.stop() == 0, "SIGTERM under load must exit 0\n" + broker.log_tail()
        else:
            broker.kill9()
        broker.start()
    for load in loads:
        load.wait_acked(load.acked_count + ACKS_PER_ROUND)
    for load in loads:
        load.stop()
    for load in loads:
        assert load.fatal is None, f"{load.tag}: {load.fatal}"
        assert load.unflushed == 0
    acked = [a for load in loads for a in load.acked]
    report = check_topic(broker.bootstrap, topic_name, PARTITIONS, acked)
    assert report.ok, report.summary()
    assert report.acknowledged >= 2 * (ROUNDS + 1) * ACKS_PER_ROUND
    assert "Bad file descriptor" not in broker.log_text()
