"""Bounded loss on restore, and the bucket requests a replay costs (moto's real S3 endpoint).

- ``tiering.segment_max_upload_interval_ms`` rolls and archives a quiet partition's tail;
- SIGTERM archives the tail before the broker exits, so a wipe and restore loses nothing;
- after a kill -9, ``streamd restore --dry-run`` states per partition how many offsets the
  cluster archive recorded that the bucket does not hold;
- a cold replay issues no more GETs than the chunks (and index objects) it needs, and
  ``/metrics`` reports the bucket requests by verb, also per GB archived and replayed.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.support import ops
from tests.support.archive import partition_manifest, run_restore
from tests.support.broker import BrokerProcess
from tests.support.moto import (
    MotoS3,
    make_records,
    metric,
    metrics_text,
    produce,
    wait_partition,
    wait_until,
)

pytestmark = [pytest.mark.streamd_only]

TIERED = {"remote.storage.enable": "true"}


def settings(moto: MotoS3, bucket: str, **extra: str) -> dict[str, str]:
    return moto.broker_settings(bucket) | {
        "tiering.upload_interval_ms": "250",
        "tiering.offsets_archive_interval_ms": "300",
        "log.housekeeping_interval_ms": "250",
        **extra,
    }


def test_a_quiet_tail_is_archived_after_the_max_upload_interval(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    broker = broker_factory(
        settings(moto_s3, bucket, **{"tiering.segment_max_upload_interval_ms": "1000"})
    )
    ops.create_topic(broker.bootstrap, topic_name, 1, TIERED)  # 1 GiB segments: never full
    produce(broker.bootstrap, topic_name, make_records(300, seed=1))
    report = wait_partition(
        broker, topic_name, "the active segment rolled and archived",
        lambda r: r["last_uploaded_offset"] == 299,
    )
    assert report["pending_uploads"] == 0 and report["last_error"] is None


def test_sigterm_archives_the_tail_and_a_restore_loses_nothing(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    bucket = moto_s3.new_bucket()
    conf = settings(moto_s3, bucket)
    broker = BrokerProcess(tmp_path / "data", conf, log_path=tmp_path / "broker.log")
    records = make_records(500, seed=2)
    try:
        broker.start()
        ops.create_topic(broker.bootstrap, "t", 1, TIERED)
        produce(broker.bootstrap, "t", records)
        wait_partition(broker, "t", "manifest loaded", lambda r: r["manifest_loaded"])
        assert broker.stop() == 0
    finally:
        broker.close()
    _, manifest = partition_manifest(moto_s3, bucket, "t")
    assert manifest.last_uploaded_offset == 499, "the tail was archived on SIGTERM"
    shutil.rmtree(tmp_path / "data")
    done = run_restore(conf, tmp_path / "data", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    (part,) = json.loads(done.stdout)["topics"][0]["partitions"]
    assert (part["next_offset"], part["unarchived_offsets"]) == (500, 0)
    restored = BrokerProcess(tmp_path / "data", conf, log_path=tmp_path / "restored.log")
    try:
        restored.start()
        got = ops.consume(restored.bootstrap, "t", 0, 0)
        assert [m.value for m in got] == [r.value for r in records]
    finally:
        restored.close()


def test_restore_states_the_offsets_that_never_reached_the_bucket(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    bucket = moto_s3.new_bucket()
    conf = settings(moto_s3, bucket)
    broker = BrokerProcess(tmp_path / "data", conf, log_path=tmp_path / "broker.log")
    try:
        broker.start()
        ops.create_topic(broker.bootstrap, "t", 2, TIERED)
        ops.produce(broker.bootstrap, "t", [b"x%d" % i for i in range(40)], partition=1)

        def recorded() -> bool:
            if "cluster/offsets.json" not in moto_s3.objects(bucket):
                return False
            body = moto_s3.get(bucket, "cluster/offsets.json")[0]
            return json.loads(body).get("partitions", {}).get("t", {}).get("ends") == [0, 40]

        wait_until("the offsets document to record the end offsets", recorded)
        broker.kill9()  # no tail archiving
    finally:
        broker.close()
    shutil.rmtree(tmp_path / "data")
    dry = run_restore(conf, tmp_path / "data", "--dry-run", "--format", "json")
    assert dry.returncode == 3, dry.stdout + dry.stderr
    parts = json.loads(dry.stdout)["topics"][0]["partitions"]
    assert [(p["recorded_end_offset"], p["unarchived_offsets"]) for p in parts] == [
        (0, 0), (40, 40)
    ]
    text = run_restore(conf, tmp_path / "data", "--dry-run")
    assert text.returncode == 3
    assert "t-1 offsets 0-39" in text.stdout and "never archived" in text.stdout


def test_a_cold_replay_gets_only_the_chunks_it_needs(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    chunk = 131072
    bucket = moto_s3.new_bucket()
    broker = broker_factory(
        settings(moto_s3, bucket, **{"tiering.cache_chunk_bytes": str(chunk),
                                     "tiering.merge_target_bytes": "1048576"})
    )
    config = TIERED | {"segment.bytes": "262144", "local.retention.bytes": "0"}
    ops.create_topic(broker.bootstrap, topic_name, 1, config)
    records = make_records(6000, seed=3)
    produce(broker.bootstrap, topic_name, records)
    wait_partition(
        broker, topic_name, "everything but the active segment archived and evicted",
        lambda r: r["pending_uploads"] == 0 and r["local_segments"] == 1
        and r["local_start_offset"] > 4000,
        timeout=40,
    )
    archived = metrics_text(broker.admin_port)
    assert metric(archived, 'streamd_tiering_bucket_requests_per_gb_archived{verb="PUT"}') > 0
    broker.restart()  # a cold cache (the restart archives the tail too)
    wait_partition(
        broker, topic_name, "the tail archived and evicted",
        lambda r: r["manifest_loaded"] and r["local_start_offset"] == len(records),
    )
    _, manifest = partition_manifest(moto_s3, bucket, topic_name)
    before = metric(metrics_text(broker.admin_port),
                    'streamd_tiering_bucket_requests_total{verb="GET"}')
    got = ops.consume(broker.bootstrap, topic_name, 0, 0)
    assert [m.value for m in got] == [r.value for r in records]
    text = metrics_text(broker.admin_port)
    gets = metric(text, 'streamd_tiering_bucket_requests_total{verb="GET"}') - before
    needed = sum(math.ceil(s.size_bytes / chunk) + 1 for s in manifest.segments)
    assert 0 < gets <= needed, f"{gets} GETs for {needed} chunks and index objects"
    assert metric(text, 'streamd_tiering_bucket_requests_per_gb_replayed{verb="GET"}') > 0
