"""A damaged archive never serves wrong bytes, never stops the rest, and is never forgotten.

Faults are injected into moto's bucket through its S3 API (bit rot that keeps the object's
metadata and checksum stamp, deleted manifests) or by cutting the proxy in front of it:

- one flipped bit in the baseOffset of an archived batch (a field its CRC32C does not cover)
  makes a Fetch of that batch fail with KAFKA_STORAGE_ERROR, never return records under
  shifted offsets (invariant 10);
- a rotten manifest is reported (``/v1/health`` 503, the partition's error) while the other
  partitions keep archiving and the cluster metadata archive keeps up; restore then restores
  every other topic and exits 3;
- a manifest missing at start-up is recovered from the broker's local copy (earliest stays 0);
- restore over a missing manifest refuses to hand the archived offsets out again, and with
  ``--allow-missing-manifest`` starts after them without overwriting any archived object;
- ``/v1/health`` is 503 while the bucket does not answer, before any topic is tiered.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic

from streamd.errors import ErrorCode
from streamd.log.batch import validate_produce_batches
from streamd.tiering.checksum import crc32c_hex
from tests.support import ops
from tests.support.archive import batches, flip_bit, health, partition_manifest, run_restore
from tests.support.broker import BrokerProcess
from tests.support.moto import (
    MotoS3,
    check_bucket_consistent,
    make_records,
    produce,
    storage_report,
    wait_partition,
    wait_until,
)
from tests.support.wire import Wire

pytestmark = [pytest.mark.streamd_only]

TIERED = {
    "remote.storage.enable": "true",
    "segment.bytes": "65536",
    "local.retention.bytes": "65536",
}


def settings(moto: MotoS3, bucket: str, endpoint: str | None = None) -> dict[str, str]:
    return moto.broker_settings(bucket, endpoint) | {
        "tiering.upload_interval_ms": "250",
        "tiering.offsets_archive_interval_ms": "300",
        "log.housekeeping_interval_ms": "250",
    }


def fetch_one(
    broker: BrokerProcess, topic: str, offset: int, partition: int = 0
) -> tuple[int, bytes]:
    """A Fetch of ``offset`` with a 1-byte budget: the one batch holding it (KIP-74)."""
    with Wire(broker.address) as wire:
        resp = wire.call(
            FetchRequest(
                replica_id=-1,
                max_wait=timedelta(milliseconds=100),
                min_bytes=1,
                max_bytes=1 << 20,
                isolation_level=0,
                session_id=0,
                session_epoch=-1,
                topics=(
                    FetchTopic(
                        topic=topic,
                        partitions=(
                            FetchPartition(
                                partition=partition, fetch_offset=offset, partition_max_bytes=1
                            ),
                        ),
                    ),
                ),
                forgotten_topics_data=(),
                rack_id="",
            )
        )
    part = resp.responses[0].partitions[0]
    return int(part.error_code), bytes(part.records or b"")


def archived_past(broker: BrokerProcess, topic: str, offset: int) -> dict:
    return wait_partition(
        broker,
        topic,
        f"offsets below {offset} archived and gone from local disk",
        lambda r: r["local_start_offset"] > offset and r["pending_uploads"] == 0,
        timeout=40,
    )


def test_a_flipped_base_offset_bit_is_an_error_not_shifted_records(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    broker = broker_factory(settings(moto_s3, bucket))
    config = TIERED | {"segment.bytes": "262144", "local.retention.bytes": "262144"}
    ops.create_topic(broker.bootstrap, topic_name, 2, config)
    records = make_records(3000, seed=3)
    produce(broker.bootstrap, topic_name, records)
    produce(broker.bootstrap, topic_name, [dataclasses.replace(r, partition=1) for r in records])
    archived_past(broker, topic_name, 1000)
    _, manifest = partition_manifest(moto_s3, bucket, topic_name)
    first = manifest.segments[0]
    body, _ = moto_s3.get(bucket, first.key)
    # A batch past the first 64 KiB with an odd base offset N: bit 0 flipped makes it claim
    # N-1..., which a reader that trusts the batch serves as the answer for offset N.
    pos, base, _last = next(b for b in batches(body) if b[0] > 70_000 and b[1] % 2 == 1)
    flip_bit(moto_s3, bucket, first.key, pos + 7)

    code, records = fetch_one(broker, topic_name, base)
    assert code == ErrorCode.KAFKA_STORAGE_ERROR, (
        f"offset {base} answered with error {code} and batches "
        f"{[(h.base_offset, h.last_offset) for h in validate_produce_batches(records, 1 << 30)]}"
    )
    code, served = fetch_one(broker, topic_name, base, partition=1)
    assert code == ErrorCode.NONE, "the rest of the archive is still served"
    assert validate_produce_batches(served, 1 << 30)[0].base_offset <= base


def test_a_rotten_manifest_is_reported_and_everything_else_goes_on(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    bucket = moto_s3.new_bucket()
    conf = settings(moto_s3, bucket)
    broker = BrokerProcess(tmp_path / "data", conf, log_path=tmp_path / "broker.log")
    try:
        broker.start()
        for name in ("rotten", "healthy"):
            ops.create_topic(broker.bootstrap, name, 1, TIERED)
            produce(broker.bootstrap, name, make_records(600, seed=4))
        for name in ("rotten", "healthy"):
            wait_partition(broker, name, "archived", lambda r: r["last_uploaded_offset"] > 100)
        broker.stop()
        key, _ = partition_manifest(moto_s3, bucket, "rotten")
        flip_bit(moto_s3, bucket, key, 40)  # body bit-flipped, metadata (stamp) intact
        broker.start()

        def degraded() -> dict | None:
            status, doc = health(broker.admin_port)
            return doc if status == 503 else None

        doc = wait_until("health to report the rotten manifest", degraded, timeout=20)
        assert doc["status"] == "degraded" and doc["tiering"]["status"] == "degraded"
        assert any(key in e for e in doc["tiering"]["errors"]), doc
        report = storage_report(broker.admin_port, "rotten")["partitions"][0]
        assert key in report["last_error"]

        before = storage_report(broker.admin_port, "healthy")["partitions"][0]
        produce(broker.bootstrap, "healthy", make_records(600, seed=5))
        wait_partition(
            broker, "healthy", "the healthy topic keeps archiving",
            lambda r: r["last_uploaded_offset"] > before["last_uploaded_offset"],
        )
        ops.create_topic(broker.bootstrap, "late", 1, TIERED)

        def late_archived() -> bool:
            body = moto_s3.get(bucket, "cluster/metadata.json")[0]
            return "late" in {t["name"] for t in json.loads(body)["topics"]}

        wait_until("a topic created now to reach the cluster metadata archive", late_archived)
        broker.stop()
    finally:
        broker.close()
    shutil.rmtree(tmp_path / "data")
    done = run_restore(conf, tmp_path / "restored")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "rotten" in done.stdout and key in done.stdout
    restored = sorted(p.name for p in (tmp_path / "restored" / "topics").iterdir())
    assert restored == ["healthy", "late"]


def test_a_manifest_missing_at_start_is_recovered_from_the_local_copy(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    broker = broker_factory(settings(moto_s3, bucket))
    ops.create_topic(broker.bootstrap, topic_name, 1, TIERED)
    records = make_records(2000, seed=8)
    produce(broker.bootstrap, topic_name, records)
    archived_past(broker, topic_name, 600)
    broker.stop()
    key, before = partition_manifest(moto_s3, bucket, topic_name)
    moto_s3.admin.delete_object(Bucket=bucket, Key=key)
    broker.start()
    report = wait_partition(
        broker, topic_name, "the manifest loaded", lambda r: r["manifest_loaded"]
    )
    assert report["earliest_offset"] == 0 and report["remote_start_offset"] == 0, report
    assert ops.watermarks(broker.bootstrap, topic_name)[0] == 0, "earliest stays 0"
    assert "recovered" in (report.get("notice") or ""), report
    _, after = partition_manifest(moto_s3, bucket, topic_name)
    assert after.segments[: len(before.segments)] == before.segments
    check_bucket_consistent(moto_s3, bucket)
    got = ops.consume(broker.bootstrap, topic_name, 0, 0)
    assert [m.offset for m in got] == list(range(len(records)))
    assert [m.value for m in got] == [r.value for r in records]


def test_restore_over_a_missing_manifest_never_reuses_archived_offsets(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    bucket = moto_s3.new_bucket()
    conf = settings(moto_s3, bucket)
    broker = BrokerProcess(tmp_path / "data", conf, log_path=tmp_path / "broker.log")
    try:
        broker.start()
        ops.create_topic(broker.bootstrap, "lost", 1, TIERED)
        produce(broker.bootstrap, "lost", make_records(1500, seed=6))
        wait_partition(broker, "lost", "archived", lambda r: r["last_uploaded_offset"] > 1000)
        broker.stop()  # archives the tail
    finally:
        broker.close()
    shutil.rmtree(tmp_path / "data")
    key, manifest = partition_manifest(moto_s3, bucket, "lost")
    moto_s3.admin.delete_object(Bucket=bucket, Key=key)
    archived = {k: crc32c_hex(moto_s3.get(bucket, k)[0]) for k in moto_s3.objects(bucket)
                if k.endswith((".log", ".index"))}

    refused = run_restore(conf, tmp_path / "r1")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "no manifest" in refused.stdout and "--allow-missing-manifest" in refused.stdout
    assert not (tmp_path / "r1" / "topics" / "lost").exists()

    target = tmp_path / "r2"
    allowed = run_restore(conf, target, "--allow-missing-manifest", "--format", "json")
    assert allowed.returncode == 3, allowed.stdout + allowed.stderr
    summary = json.loads(allowed.stdout)
    (part,) = summary["topics"][0]["partitions"]
    assert part["next_offset"] >= manifest.last_uploaded_offset + 1 == 1500

    restored = BrokerProcess(target, conf, log_path=tmp_path / "restored.log")
    try:
        restored.start()
        acked = ops.produce(restored.bootstrap, "lost", [b"after-%d" % i for i in range(20)])
        assert acked[0] >= 1500, "offsets the archive holds are never handed out again"
        restored.stop()  # archives the tail
    finally:
        restored.close()
    now = moto_s3.objects(bucket)
    for k, crc in archived.items():
        assert k in now and crc32c_hex(moto_s3.get(bucket, k)[0]) == crc, f"{k} was replaced"
    assert len([k for k in now if k.endswith(".log")]) > len(
        [k for k in archived if k.endswith(".log")]
    ), "the restored broker archived its new records under new keys"


def test_health_is_503_while_the_bucket_does_not_answer(
    moto_s3: MotoS3, broker_factory  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    proxy = moto_s3.proxy()
    try:
        proxy.cut()
        broker = broker_factory(settings(moto_s3, bucket, proxy.endpoint_url))
        status, doc = health(broker.admin_port)
        assert status == 503 and doc["status"] == "degraded", doc
        assert doc["tiering"]["store_reachable"] is False and doc["tiering"]["errors"]
        proxy.restore()
        wait_until("health ok once the bucket answers", lambda: health(broker.admin_port)[0] == 200)
        status, doc = health(broker.admin_port)
        assert doc["status"] == "ok" and doc["components"]["tiering"] == "ok"
    finally:
        proxy.close()


def test_local_data_is_kept_while_uploads_are_refused(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    """A key that holds other bytes is never overwritten (invariant 9): the upload is refused,
    reported, and the local segments stay until they are archived."""
    bucket = moto_s3.new_bucket()
    broker = broker_factory(
        settings(moto_s3, bucket)
        | {"tiering.upload_interval_ms": "60000", "tiering.merge_target_bytes": "0"}
    )
    ops.create_topic(broker.bootstrap, topic_name, 1, TIERED)
    wait_partition(broker, topic_name, "manifest loaded", lambda r: r["manifest_loaded"])
    produce(broker.bootstrap, topic_name, make_records(600, seed=2))
    incarnation = storage_report(broker.admin_port, topic_name)["partitions"][0]["incarnation"]
    broker.kill9()  # nothing archived yet (a graceful stop would archive the tail)
    # Someone else's object under the key the first upload will use.
    from streamd.tiering import keys

    topic_dir = broker.data_dir / "topics" / topic_name
    topic_id = uuid.UUID(hex=json.loads((topic_dir / "topic.json").read_text())["topic_id"])
    first_segment = sorted((topic_dir / "0").glob("*.log"))[0]
    last = batches(first_segment.read_bytes())[-1][2]
    key = keys.segment_key(topic_name, topic_id, 0, 0, last, incarnation=incarnation)
    moto_s3.admin.put_object(Bucket=bucket, Key=key, Body=b"not ours")
    broker.settings["tiering.upload_interval_ms"] = "250"
    broker.start()
    report = wait_partition(broker, topic_name, "the refusal reported",
                            lambda r: r["last_error"] is not None)
    assert "not replaced" in report["last_error"]
    assert moto_s3.get(bucket, key)[0] == b"not ours"
    assert report["local_start_offset"] == 0 and report["last_uploaded_offset"] == -1
    assert health(broker.admin_port)[0] == 503
