"""``streamd archive verify`` against a bucket a real broker archived into (moto S3), then
damaged through boto3: missing objects, flipped bytes, unreadable manifests and orphans are
each reported, with exit code 1 (issue 18 item 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.broker import REPO_ROOT, BrokerProcess
from tests.support.moto import ACCESS_KEY, REGION, SECRET_KEY, MotoS3
from tests.support.tiered import TieredTopic, fill_tiered_topic, tiered_settings

pytestmark = [pytest.mark.streamd_only]


@pytest.fixture(scope="module")
def archived(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TieredTopic]:
    bucket = moto_s3.new_bucket()
    broker = BrokerProcess(
        tmp_path_factory.mktemp("verify") / "data", tiered_settings(moto_s3, bucket)
    )
    broker.start()
    try:
        data = fill_tiered_topic(broker, bucket, "verified", n=1200)
    finally:
        broker.close()
    yield data


def verify(moto: MotoS3, bucket: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMD_", "AWS_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    cmd = [
        sys.executable, "-m", "streamd", "archive", "verify",
        "--set", f"tiering.store=s3://{bucket}",
        "--set", f"tiering.s3.endpoint_url={moto.endpoint_url}",
        "--set", f"tiering.s3.region={REGION}",
        "--set", f"tiering.s3.access_key_id={ACCESS_KEY}",
        "--set", f"tiering.s3.secret_access_key={SECRET_KEY}",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def copy_bucket(moto: MotoS3, source: str) -> str:
    target = moto.new_bucket()
    for key in moto.objects(source):
        moto.admin.copy_object(
            Bucket=target, Key=key, CopySource={"Bucket": source, "Key": key},
            MetadataDirective="COPY",
        )
    return target


def test_a_healthy_archive_verifies(moto_s3: MotoS3, archived: TieredTopic) -> None:
    proc = verify(moto_s3, archived.bucket, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = report(proc)
    assert doc["ok"] is True and doc["problems"] == [] and doc["orphans"] == []
    segments = doc["segments"]
    assert segments >= 2
    assert doc["verified_objects"] == 2 * segments, "every segment and its index"
    assert doc["partition_manifests"] >= 1 and doc["topic_manifests"] == 1
    assert doc["cluster_documents"] >= 1
    text = verify(moto_s3, archived.bucket)
    assert text.returncode == 0
    assert "problems             0" in text.stdout


def test_damage_is_reported_with_exit_1(moto_s3: MotoS3, archived: TieredTopic) -> None:
    bucket = copy_bucket(moto_s3, archived.bucket)
    objects = moto_s3.objects(bucket)
    segments = sorted(k for k in objects if k.endswith(".log"))
    indexes = sorted(k for k in objects if k.endswith(".index"))
    flipped, dropped, dropped_index = segments[0], segments[1], indexes[-1]
    body, meta = moto_s3.get(bucket, flipped)
    damaged = bytearray(body)
    damaged[len(damaged) // 2] ^= 0xFF
    moto_s3.admin.put_object(Bucket=bucket, Key=flipped, Body=bytes(damaged), Metadata=meta)
    moto_s3.admin.delete_object(Bucket=bucket, Key=dropped)
    moto_s3.admin.delete_object(Bucket=bucket, Key=dropped_index)
    orphan = flipped.rsplit("/", 1)[0] + "/00000000000009999999-00000000000009999999.log"
    moto_s3.admin.put_object(Bucket=bucket, Key=orphan, Body=b"left behind by a crash")

    proc = verify(moto_s3, bucket, "--format", "json")
    assert proc.returncode == 1
    assert "archive verify FAILED" in proc.stderr
    doc = report(proc)
    found = {(p["kind"], p["key"]) for p in doc["problems"]}
    assert ("checksum_mismatch", flipped) in found
    assert ("missing", dropped) in found
    assert ("missing", dropped_index) in found
    assert all(p["topic"] == archived.topic for p in doc["problems"])
    assert [o["key"] for o in doc["orphans"]] == [orphan]


def test_orphans_alone_pass_unless_strict(moto_s3: MotoS3, archived: TieredTopic) -> None:
    bucket = copy_bucket(moto_s3, archived.bucket)
    some = next(k for k in moto_s3.objects(bucket) if k.endswith(".log"))
    orphan = some.rsplit("/", 1)[0] + "/00000000000008888888-00000000000008888888.index"
    moto_s3.admin.put_object(Bucket=bucket, Key=orphan, Body=b"x")
    relaxed = verify(moto_s3, bucket, "--format", "json")
    assert relaxed.returncode == 0
    assert [o["key"] for o in report(relaxed)["orphans"]] == [orphan]
    assert verify(moto_s3, bucket, "--strict", "--format", "json").returncode == 1


def test_unreadable_manifest(moto_s3: MotoS3, archived: TieredTopic) -> None:
    bucket = copy_bucket(moto_s3, archived.bucket)
    manifest = next(k for k in moto_s3.objects(bucket) if k.endswith("/manifest.json"))
    moto_s3.admin.put_object(Bucket=bucket, Key=manifest, Body=b'{"format_version": 1}')
    proc = verify(moto_s3, bucket, "--format", "json")
    assert proc.returncode == 1
    doc = report(proc)
    assert [p["kind"] for p in doc["problems"]] == ["unreadable_manifest"]
    assert doc["orphans"] == [], "objects of an unreadable manifest are not orphans"
    assert doc["unverifiable"], "they are listed as unverifiable"


def test_unusable_store_is_one_line(moto_s3: MotoS3) -> None:
    proc = verify(moto_s3, "no-such-bucket-here")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot verify s3://no-such-bucket-here")
