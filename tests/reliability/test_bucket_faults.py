"""Tiered storage under faults, with producers writing all along (the checker of
tests/support/checker.py decides): the broker killed (kill -9) at each step of the upload
pipeline, and a bucket that is slow, throttles, truncates and corrupts answers and drops
connections. Every acknowledged record must be read back once at its offset (through the
bucket for what left local disk), and every manifest in the bucket must name only objects that
are there and match their checksums (invariant 3).

The bucket is moto's real HTTP endpoint behind tests/support/proxy.py, which recognises the
request lines: a trap kills the broker when it sees a given request (before it reaches the
bucket, or after the bucket answered it), and ``BucketFaults`` spoils requests at random.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import BrokerFactory
from tests.support import ops
from tests.support.checker import LoadProducer, check_topic, read_partition
from tests.support.moto import MotoS3, check_bucket_consistent, wait_partition
from tests.support.proxy import FAULTS, BucketFaults, TcpProxy

pytestmark = [pytest.mark.streamd_only]

CONFIG = {
    "remote.storage.enable": "true",
    "segment.bytes": "524288",
    "local.retention.bytes": "524288",
}

STEPS = [
    (r"\.log(\?|$)", False),
    (r"\.log(\?|$)", True),
    (r"\.index(\?|$)", False),
    (r"\.index(\?|$)", True),
    (r"/manifest\.json(\?|$)", False),
    (r"/manifest\.json(\?|$)", True),
]
"""Upload pipeline steps (segment object, index object, manifest), each killed before the
request reaches the bucket and after the bucket stored it but before the broker heard."""


def tiered_broker(broker_factory: BrokerFactory, moto_s3: MotoS3, proxy: TcpProxy) -> object:
    bucket = moto_s3.new_bucket()
    broker = broker_factory(
        moto_s3.broker_settings(bucket, proxy.endpoint_url)
        | {
            "fsync": "always",
            "tiering.upload_interval_ms": "200",
            "log.housekeeping_interval_ms": "200",
        }
    )
    broker.bucket = bucket  # type: ignore[attr-defined]
    return broker


def caught_up(broker: object, topic: str) -> None:
    wait_partition(
        broker,
        topic,
        "uploads caught up and local data deleted",
        lambda r: r["pending_uploads"] == 0 and r["local_start_offset"] > 0,
        timeout=60,
    )


def test_kill9_at_each_step_of_the_upload_pipeline(
    broker_factory: BrokerFactory, moto_s3: MotoS3, topic_name: str
) -> None:
    proxy = moto_s3.proxy()
    try:
        broker = tiered_broker(broker_factory, moto_s3, proxy)
        ops.create_topic(broker.bootstrap, topic_name, 1, CONFIG)  # type: ignore[attr-defined]
        load = LoadProducer(broker.bootstrap, topic_name, 1)  # type: ignore[attr-defined]
        load.start()
        for pattern, after in STEPS:
            trap = proxy.trap("PUT", pattern, broker.kill9, after_response=after)  # type: ignore[attr-defined]
            assert trap.fired.wait(60), f"no PUT matching {pattern} within 60 s"
            assert not broker.running, trap.request  # type: ignore[attr-defined]
            broker.start()  # type: ignore[attr-defined]
        load.wait_acked(load.acked_count + 2000)
        load.stop()
        assert load.fatal is None, load.fatal
        caught_up(broker, topic_name)
        check_bucket_consistent(moto_s3, broker.bucket)  # type: ignore[attr-defined]
        report = check_topic(broker.bootstrap, topic_name, 1, load.acked)  # type: ignore[attr-defined]
        assert report.ok, report.summary()
    finally:
        proxy.close()


def test_a_misbehaving_bucket_loses_and_garbles_nothing(
    broker_factory: BrokerFactory, moto_s3: MotoS3, topic_name: str, tmp_path: Path
) -> None:
    proxy = moto_s3.proxy()
    try:
        broker = tiered_broker(broker_factory, moto_s3, proxy)
        bootstrap = broker.bootstrap  # type: ignore[attr-defined]
        ops.create_topic(bootstrap, topic_name, 1, CONFIG)
        load = LoadProducer(bootstrap, topic_name, 1)
        load.start()
        load.wait_acked(3000)
        wait_partition(broker, topic_name, "archived data", lambda r: r["local_start_offset"] > 0)
        faults = proxy.faults = BucketFaults(rate=0.3, delay_s=0.2, seed=12)
        deadline = time.monotonic() + 60
        reads = 0
        while time.monotonic() < deadline and (
            min(faults.counts[k] for k in FAULTS) == 0 or reads < 2
        ):
            load.wait_acked(load.acked_count + 500)
            try:  # remote reads through the faulty bucket: an answer is right or an error
                got = read_partition(bootstrap, topic_name, 0, timeout=20)
            except Exception:  # noqa: BLE001  (a failed read is allowed; garbage is not)
                continue
            reads += 1
            acked = {a.offset: a.value for a in list(load.acked)}
            wrong = [o for o, v in got if o in acked and acked[o] != v]
            assert not wrong, f"offsets {wrong[:5]} read back different bytes"
        assert all(faults.counts[k] for k in FAULTS), faults.counts
        proxy.faults = None
        load.wait_acked(load.acked_count + 1000)
        load.stop()
        assert load.fatal is None, load.fatal
        caught_up(broker, topic_name)
        check_bucket_consistent(moto_s3, broker.bucket)  # type: ignore[attr-defined]
        report = check_topic(bootstrap, topic_name, 1, load.acked)
        assert report.ok, report.summary()
        assert reads >= 1, "no read through the faulty bucket succeeded"
    finally:
        proxy.close()
