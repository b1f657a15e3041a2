"""Tiered storage under faults: an S3 outage while producing, and a crash inside the upload
pipeline (between the segment object and the manifest).

The bucket is moto's real HTTP endpoint behind a TCP proxy that can refuse connections and come
back with the bucket's contents intact (tests/support/moto.py).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.support import ops
from tests.support.moto import (
    MotoS3,
    check_bucket_consistent,
    make_records,
    produce,
    storage_report,
    wait_partition,
    wait_until,
)

pytestmark = [pytest.mark.streamd_only]

CONFIG = {
    "remote.storage.enable": "true",
    "segment.bytes": "65536",
    "local.retention.bytes": "65536",
}


def admin_json(port: int, path: str) -> dict:
    """The JSON body, also of an error status (``/v1/health`` answers 503 when degraded)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return json.load(resp)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        return json.load(exc)  # type: ignore[no-any-return]


def consume_all(bootstrap: str, topic: str, expected: int) -> list[ops.Message]:
    got = ops.consume(bootstrap, topic, 0, 0)
    assert [m.offset for m in got] == list(range(expected))
    return got


def test_outage_keeps_local_data_and_uploads_resume(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    proxy = moto_s3.proxy()
    try:
        broker = broker_factory(
            moto_s3.broker_settings(bucket, proxy.endpoint_url)
            | {"tiering.upload_interval_ms": "250", "log.housekeeping_interval_ms": "250"}
        )
        ops.create_topic(broker.bootstrap, topic_name, 1, CONFIG)
        records = make_records(3000, seed=5)
        produce(broker.bootstrap, topic_name, records[:1000])
        before = wait_partition(
            broker, topic_name, "first uploads", lambda r: r["last_uploaded_offset"] > 0
        )
        proxy.cut()
        produce(broker.bootstrap, topic_name, records[1000:])
        archived = storage_report(broker.admin_port, topic_name)["partitions"][0]
        assert archived["high_watermark"] == len(records)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            report = storage_report(broker.admin_port, topic_name)["partitions"][0]
            assert report["local_start_offset"] <= archived["last_uploaded_offset"] + 1
            time.sleep(0.2)
        assert report["pending_uploads"] > 0 and report["last_error"]
        assert report["last_uploaded_offset"] == archived["last_uploaded_offset"]
        assert report["last_uploaded_offset"] >= before["last_uploaded_offset"]
        assert report["local_bytes"] > 500_000, "local data must accumulate during the outage"
        health = admin_json(broker.admin_port, "/v1/health")["tiering"]
        assert health["status"] == "degraded" and health["errors"], health
        assert health["upload_lag_offsets"] > 0 and health["upload_lag_bytes"] > 0

        proxy.restore()
        after = wait_partition(
            broker,
            topic_name,
            "uploads resumed and local retention caught up",
            lambda r: r["pending_uploads"] == 0 and r["local_start_offset"] > 2000,
        )
        assert after["last_error"] is None
        health = admin_json(broker.admin_port, "/v1/health")["tiering"]
        assert health["status"] == "ok" and not health["errors"], health
        got = consume_all(broker.bootstrap, topic_name, len(records))
        assert [m.value for m in got] == [r.value for r in records]
        check_bucket_consistent(moto_s3, bucket)
    finally:
        proxy.close()


def test_crash_between_segment_and_manifest_upload(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    broker = broker_factory(
        moto_s3.broker_settings(bucket)
        | {
            "tiering.upload_interval_ms": "1500",
            "log.housekeeping_interval_ms": "250",
            "tiering.debug.fail_after_segment_upload": "true",
        }
    )
    ops.create_topic(broker.bootstrap, topic_name, 1, CONFIG)
    records = make_records(2000, seed=9)
    produce(broker.bootstrap, topic_name, records)
    wait_until("the injected crash", lambda: not broker.running, timeout=20)
    assert broker.proc is not None and broker.proc.returncode == 75
    objects = moto_s3.objects(bucket)
    assert [k for k in objects if k.endswith(".log")], "the segment object was stored"
    assert not [k for k in objects if k.endswith("/manifest.json")], "no manifest yet"
    check_bucket_consistent(moto_s3, bucket)

    broker.settings["tiering.debug.fail_after_segment_upload"] = "false"
    broker.settings["tiering.upload_interval_ms"] = "250"
    broker.start()
    report = wait_partition(
        broker,
        topic_name,
        "re-upload after restart",
        lambda r: r["pending_uploads"] == 0 and r["local_start_offset"] > 0,
    )
    assert report["errors"] == 0
    (manifest,) = check_bucket_consistent(moto_s3, bucket)
    assert manifest.segments[0].base_offset == 0
    got = consume_all(broker.bootstrap, topic_name, len(records))
    assert [m.value for m in got] == [r.value for r in records]

    broker.restart()
    again = wait_partition(broker, topic_name, "manifest reloaded", lambda r: r["manifest_loaded"])
    assert again["last_uploaded_offset"] >= report["last_uploaded_offset"]
    assert ops.watermarks(broker.bootstrap, topic_name) == (0, len(records))
