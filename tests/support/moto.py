"""A real S3 endpoint for broker tests: moto in server mode, behind a switchable TCP proxy

`moto_s3` (session fixture, imported by the integration and reliability conftests) runs
`python -m moto.server` on a free loopback port. Brokers talk to it through a `TcpProxy` so a
test can cut the bucket off (connections refused, in-flight ones reset) and bring it back with
its contents intact: restarting moto itself would lose every object. Tests never patch boto.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from confluent_kafka import Producer

from tests.support.broker import free_port
from tests.support.clients import Rec
from tests.support.proxy import TcpProxy

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass
class MotoS3:
    endpoint_url: str
    """moto itself; brokers should use a bucket's proxy (see :meth:`broker_settings`)."""
    admin: Any

    def new_bucket(self) -> str:
        bucket = f"streamd-{uuid.uuid4().hex[:16]}"
        self.admin.create_bucket(Bucket=bucket)
        return bucket

    def proxy(self) -> TcpProxy:
        host, port = self.endpoint_url.removeprefix("http://").split(":")
        return TcpProxy((host, int(port)))

    def broker_settings(self, bucket: str, endpoint_url: str | None = None) -> dict[str, str]:
        return {
            "tiering.store": f"s3://{bucket}",
            "tiering.s3.endpoint_url": endpoint_url or self.endpoint_url,
            "tiering.s3.region": REGION,
            "tiering.s3.access_key_id": ACCESS_KEY,
            "tiering.s3.secret_access_key": SECRET_KEY,
        }

    def objects(self, bucket: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for page in self.admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                out[item["Key"]] = int(item["Size"])
        return out

    def get(self, bucket: str, key: str) -> tuple[bytes, dict[str, str]]:
        resp = self.admin.get_object(Bucket=bucket, Key=key)
        return resp["Body"].read(), dict(resp.get("Metadata", {}))


def start_moto(log_dir: Any) -> tuple[subprocess.Popen[bytes], MotoS3]:
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    port = free_port()
    log_path = log_dir / "moto.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}: {log_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not listen on port {port}") from None
            time.sleep(0.05)
    endpoint = f"http://127.0.0.1:{port}"
    admin = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    return proc, MotoS3(endpoint, admin)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    proc, moto = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield moto
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- helpers for tiering scenarios ---------------------------------------------------------------


def storage_report(admin_port: int, topic: str) -> dict[str, Any]:
    import json
    import urllib.request

    url = f"http://127.0.0.1:{admin_port}/v1/topics/{topic}/storage"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def metrics_text(admin_port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(what: str, predicate: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def check_bucket_consistent(moto: MotoS3, bucket: str) -> list[Any]:
    """Every segment and index named by every partition manifest exists, with the checksum the
    manifest records (and the object's own CRC32C stamp). Returns the manifests."""
    from streamd.tiering.checksum import crc32c_hex
    from streamd.tiering.manifest import load_partition_manifest

    objects = moto.objects(bucket)
    manifests = []
    for key in objects:
        if not key.endswith("/manifest.json"):
            continue
        manifest = load_partition_manifest(moto.get(bucket, key)[0])
        manifests.append(manifest)
        for seg in manifest.segments:
            for obj_key, checksum in ((seg.key, seg.checksum), (seg.index_key, seg.index_checksum)):
                assert obj_key in objects, f"{key} names missing object {obj_key}"
                body, meta = moto.get(bucket, obj_key)
                assert crc32c_hex(body) == checksum, f"{obj_key} does not match its manifest"
                assert meta.get("streamd-crc32c") == checksum, f"{obj_key} has a wrong stamp"
            assert objects[seg.key] == seg.size_bytes
    return manifests


def make_records(n: int, seed: int = 7) -> list[Rec]:
    rng = random.Random(seed)
    base_ts = int(time.time() * 1000) - 3_600_000
    return [
        Rec(
            0,
            b"key-%d" % i,
            rng.randbytes(rng.randint(200, 700)),
            (("i", str(i).encode()), ("bin", rng.randbytes(4))),
            base_ts + 10 * i,
        )
        for i in range(n)
    ]


def produce(bootstrap: str, topic: str, records: list[Rec]) -> None:
    """Small batches (16 KiB) so that every segment holds many of them."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": False,
            "linger.ms": 2,
            "batch.size": 16384,
        }
    )
    errors: list[str] = []
    for rec in records:
        while True:
            try:
                producer.produce(
                    topic,
                    key=rec.key,
                    value=rec.value,
                    headers=list(rec.headers),
                    partition=rec.partition,
                    timestamp=rec.timestamp,
                    on_delivery=lambda err, _m: errors.append(str(err)) if err else None,
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]


def wait_partition(broker: Any, topic: str, what: str, check, timeout: float = 30):  # noqa: ANN001, ANN201
    """Partition 0's storage report once ``check(report)`` holds. A just-started broker may
    accept Kafka connections a moment before its admin API listens: that counts as not yet."""

    def probe():  # noqa: ANN202
        try:
            report = storage_report(broker.admin_port, topic)["partitions"][0]
        except OSError:
            return None
        return report if check(report) else None

    return wait_until(what, probe, timeout)
