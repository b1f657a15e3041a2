"""Read replicas end to end: two and three brokers on loopback sharing one moto bucket.

The origin archives to ``s3://bucket/origin``; each replica broker has its own prefix
(``s3://bucket/replica-b``, ...) and serves the origin's topic, created with ``streamd topic
create NAME -c remote.readreplica=s3://bucket/origin``, straight from the origin's objects.
Checked: every archived offset is served byte for byte as the origin serves it, new uploads
show after the next sync, writes are refused with a message naming the read replica, consumer
groups commit on the replica, the replica never writes into the origin's prefix (the bucket is
listed before and after), and after kill -9 of the origin ``streamd topic promote`` makes a
replica writable: consumers continue, new records get the next offsets, nothing archived is lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    ResourceType,
)
from kio.schema.delete_records.v2.request import (
    DeleteRecordsPartition,
    DeleteRecordsRequest,
    DeleteRecordsTopic,
)
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

from streamd.errors import ErrorCode
from streamd.log.batch import validate_produce_batches
from streamd.tiering import keys
from streamd.tiering.manifest import load_partition_manifest
from tests.support import ops
from tests.support.batches import build_batch
from tests.support.broker import REPO_ROOT, BrokerProcess
from tests.support.clients import Rec
from tests.support.moto import MotoS3, make_records, produce, storage_report, wait_until
from tests.support.wire import Wire

pytestmark = [pytest.mark.streamd_only]

TIERED = {
    "remote.storage.enable": "true",
    "segment.bytes": "65536",
    "local.retention.bytes": "65536",
}
SYNC_MS = 1000
PARTITIONS = 2


def settings(moto: MotoS3, bucket: str, prefix: str, **extra: str) -> dict[str, str]:
    return moto.broker_settings(bucket) | {
        "tiering.store": f"s3://{bucket}/{prefix}",
        "tiering.upload_interval_ms": "250",
        "tiering.merge_target_bytes": "131072",
        "tiering.offsets_archive_interval_ms": "300",
        "tiering.readreplica_sync_interval_ms": str(SYNC_MS),
        "log.housekeeping_interval_ms": "250",
        **extra,
    }


def spread(records: list[Rec]) -> list[Rec]:
    return [replace(r, partition=i % PARTITIONS) for i, r in enumerate(records)]


def cli(
    broker: BrokerProcess, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env.update(
        STREAMD_BROKERS=broker.bootstrap,
        STREAMD_ADMIN_URL=f"http://{broker.host}:{broker.admin_port}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "streamd", *args],
        input=stdin, capture_output=True, text=True, timeout=90, cwd=REPO_ROOT, env=env,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def archived_end(broker: BrokerProcess, topic: str) -> list[int]:
    """Each partition's next offset after its archive, once uploads have caught up with
    every sealed segment."""

    def settled() -> list[int] | None:
        parts = storage_report(broker.admin_port, topic)["partitions"]
        if all(p["pending_uploads"] == 0 and p["last_uploaded_offset"] > 0 for p in parts):
            return [p["last_uploaded_offset"] + 1 for p in parts]
        return None

    return wait_until("the origin's uploads to settle", settled, timeout=60)  # type: ignore[no-any-return]


def fetch(broker: BrokerProcess, topic: str, partition: int, offset: int) -> tuple[int, bytes]:
    with Wire(broker.address) as wire:
        resp = wire.call(
            FetchRequest(
                replica_id=-1,
                max_wait=timedelta(milliseconds=50),
                min_bytes=1,
                max_bytes=4 << 20,
                isolation_level=0,
                session_id=0,
                session_epoch=-1,
                topics=(
                    FetchTopic(
                        topic=topic,
                        partitions=(
                            FetchPartition(
                                partition=partition, fetch_offset=offset,
                                partition_max_bytes=1 << 20,
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


def fetch_range(broker: BrokerProcess, topic: str, partition: int, start: int, end: int) -> bytes:
    """The batches of offsets ``[start, end)`` exactly as Fetch answers them (``end`` must be
    a batch boundary, as the end of an archive is)."""
    out = bytearray()
    offset = start
    while offset < end:
        code, data = fetch(broker, topic, partition, offset)
        assert code == 0, (broker.bootstrap, partition, offset, code)
        assert data, (broker.bootstrap, partition, offset)
        pos = 0
        for header in validate_produce_batches(data, 1 << 30):
            if header.base_offset >= end:
                break
            out += data[pos : pos + header.size]
            pos += header.size
            offset = header.next_offset
    return bytes(out)


def raw_produce(broker: BrokerProcess, topic: str) -> tuple[int, str | None]:
    batch = build_batch([b"v"], keys=[b"k"])
    with Wire(broker.address) as wire:
        resp = wire.call(
            ProduceRequest(
                transactional_id=None,
                acks=-1,
                timeout=timedelta(seconds=10),
                topic_data=(
                    TopicProduceData(
                        name=topic, partition_data=(PartitionProduceData(index=0, records=batch),)
                    ),
                ),
            )
        )
    part = resp.responses[0].partition_responses[0]
    return int(part.error_code), part.error_message


def raw_delete_records(broker: BrokerProcess, topic: str, offset: int) -> int:
    with Wire(broker.address) as wire:
        resp = wire.call(
            DeleteRecordsRequest(
                topics=(
                    DeleteRecordsTopic(
                        name=topic,
                        partitions=(DeleteRecordsPartition(partition_index=0, offset=offset),),
                    ),
                ),
                timeout=timedelta(seconds=10),
            )
        )
    return int(resp.topics[0].partitions[0].error_code)


def latest(broker: BrokerProcess, topic: str, partition: int) -> int:
    return ops.watermarks(broker.bootstrap, topic, partition)[1]


def bucket_state(moto: MotoS3, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """Every object under ``prefix``: key -> (size, ETag)."""
    out = {}
    pages = moto.admin.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for item in page.get("Contents", []):
            out[item["Key"]] = (int(item["Size"]), str(item["ETag"]))
    return out


def origin_manifest(moto: MotoS3, bucket: str, topic: str, partition: int) -> Any:
    """The origin's manifest of one partition, as stored (found by listing its prefix)."""
    (key,) = [
        k for k in moto.objects(bucket)
        if k.startswith("origin/") and f"/{topic}/" in k
        and k.endswith(f"/{partition}/{keys.PARTITION_MANIFEST_NAME}")
    ]
    return load_partition_manifest(moto.get(bucket, key)[0])


def test_two_brokers_a_replica_serves_the_origins_archive_read_only(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    origin = broker_factory(settings(moto_s3, bucket, "origin"))
    replica = broker_factory(settings(moto_s3, bucket, "replica-b"))
    ops.create_topic(origin.bootstrap, topic_name, PARTITIONS, TIERED)
    produce(origin.bootstrap, topic_name, spread(make_records(1200)))
    ends = archived_end(origin, topic_name)
    url = f"s3://{bucket}/origin"

    mismatch = cli(replica, "topic", "create", topic_name, "-p", "3",
                   "-c", f"remote.readreplica={url}")
    assert mismatch.returncode != 0
    assert f"has {PARTITIONS} partition(s)" in mismatch.stderr and "3 requested" in mismatch.stderr
    created = cli(replica, "topic", "create", topic_name, "-c", f"remote.readreplica={url}")
    assert created.returncode == 0, created.stderr

    # Every archived offset, byte for byte as the origin answers it; earliest/latest follow it.
    for p in range(PARTITIONS):
        assert ops.watermarks(replica.bootstrap, topic_name, p) == (0, ends[p])
        assert fetch_range(replica, topic_name, p, 0, ends[p]) == fetch_range(
            origin, topic_name, p, 0, ends[p]
        )
    got = ops.consume(replica.bootstrap, topic_name, 0, 0)
    assert [m.offset for m in got] == list(range(ends[0]))
    describe = cli(replica, "topic", "describe", topic_name, "--format", "json")
    described = json.loads(describe.stdout)["configs"]
    configs = {c["name"]: c["value"] for c in described}
    assert configs["remote.readreplica"] == url and configs["segment.bytes"] == "65536"
    read_only = {c["name"] for c in described if c["read_only"]}
    assert "segment.bytes" in read_only and "remote.readreplica" not in read_only

    # New uploads show after the next sync started once they were stored.
    produce(origin.bootstrap, topic_name, make_records(400, seed=9))
    before = ends[0]
    manifest = wait_until(
        "the origin to archive more",
        lambda: (m := origin_manifest(moto_s3, bucket, topic_name, 0)).next_offset
        > before and m,
        timeout=60,
    )
    stored_ms = time.time() * 1000
    report = wait_until(
        "a replica sync that started after the upload",
        lambda: (r := storage_report(replica.admin_port, topic_name))["partitions"][0][
            "last_sync_ms"] > stored_ms and r,
        timeout=30,
    )
    part = report["partitions"][0]
    assert part["last_uploaded_offset"] >= manifest.last_uploaded_offset
    assert latest(replica, topic_name, 0) >= manifest.next_offset
    assert report["origin"] == url and report["read_replica"] == "replica"
    assert part["lag_offsets"] == 0 and report["sync_age_ms"] >= 0
    assert part["last_sync_ms"] - stored_ms < SYNC_MS + 5000, "the sync loop is stuck"
    storage = cli(replica, "topic", "describe-storage", topic_name)
    assert "read-replica" in storage.stdout and url in storage.stdout

    # Writes are refused, with a message naming the read replica.
    code, message = raw_produce(replica, topic_name)
    assert code == ErrorCode.INVALID_TOPIC_EXCEPTION and "read replica" in str(message)
    assert raw_delete_records(replica, topic_name, 1) == ErrorCode.INVALID_TOPIC_EXCEPTION
    admin = ops.admin(replica.bootstrap)
    resource = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException, match="read replica"):
        admin.incremental_alter_configs([resource])[resource].result(20)
    with pytest.raises(KafkaException, match="read replica"):
        admin.create_partitions([NewPartitions(topic_name, 4)])[topic_name].result(20)
    refused = cli(replica, "topic", "produce", topic_name, "-p", "0", stdin="hello\n")
    assert refused.returncode != 0 and "is a read replica of" in refused.stderr, refused.stderr

    # Consumer groups and committed offsets are the replica's own.
    group = f"g-{topic_name}"
    consumer = ops.consumer(replica.bootstrap, **{"group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic_name, 0, 17)], asynchronous=False)
        (committed,) = consumer.committed([TopicPartition(topic_name, 0)], timeout=15)
        assert committed.offset == 17
    finally:
        consumer.close()

    # The replica never writes into the origin's prefix: stop the origin, list, work, list.
    origin.stop()
    snapshot = bucket_state(moto_s3, bucket, "origin/")
    assert snapshot
    assert fetch_range(replica, topic_name, 1, 0, ends[1])
    assert raw_produce(replica, topic_name)[0] == ErrorCode.INVALID_TOPIC_EXCEPTION
    restarted_ms = time.time() * 1000
    replica.restart()
    wait_until("the restarted replica's first sync",
               lambda: storage_report(replica.admin_port, topic_name)["last_sync_ms"]
               >= restarted_ms, timeout=30)
    final = origin_manifest(moto_s3, bucket, topic_name, 1).next_offset
    assert final == 600, "the origin archived its tail when it stopped"
    assert ops.consume(replica.bootstrap, topic_name, 1, 0)[-1].offset == final - 1
    assert bucket_state(moto_s3, bucket, "origin/") == snapshot
    others = set(moto_s3.objects(bucket)) - set(snapshot)
    assert all(k.startswith("replica-b/") for k in others), sorted(others)[:5]


def test_three_brokers_promotion_after_the_origin_is_killed(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    url = f"s3://{bucket}/origin"
    origin = broker_factory(settings(moto_s3, bucket, "origin"))
    # b archives its active segment after a second once promoted (the new records fit one).
    b = broker_factory(settings(moto_s3, bucket, "replica-b",
                                **{"tiering.segment_max_upload_interval_ms": "1000"}))
    c = broker_factory(settings(moto_s3, bucket, "replica-c"))
    ops.create_topic(origin.bootstrap, topic_name, 1, TIERED)
    produce(origin.bootstrap, topic_name, make_records(1500))
    (end,) = archived_end(origin, topic_name)
    answer = fetch_range(origin, topic_name, 0, 0, end)
    assert cli(b, "topic", "create", topic_name, "-c", f"remote.readreplica={url}").returncode == 0
    ops.create_topic(c.bootstrap, topic_name, 1, {"remote.readreplica": url})

    # Two consumers, one on each replica, at the same time: both read the whole archive.
    results: dict[str, Any] = {}

    def read(name: str, broker: BrokerProcess) -> None:
        try:
            results[name] = fetch_range(broker, topic_name, 0, 0, end)
        except BaseException as exc:  # surfaced below
            results[name] = exc

    threads = [threading.Thread(target=read, args=(n, x)) for n, x in (("b", b), ("c", c))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results["b"] == answer and results["c"] == answer

    # A group on replica b consumes half, commits, stops.
    group = f"g-{topic_name}"
    consumed = []
    consumer = ops.consumer(b.bootstrap, **{"group.id": group, "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic_name])
        while len(consumed) < end // 2:
            for msg in consumer.consume(num_messages=100, timeout=5):
                assert msg.error() is None, msg.error()
                consumed.append(msg.offset())
        consumer.commit(
            offsets=[TopicPartition(topic_name, 0, consumed[-1] + 1)], asynchronous=False
        )
    finally:
        consumer.close()
    assert consumed == list(range(len(consumed)))

    origin.kill9()
    snapshot = bucket_state(moto_s3, bucket, "origin/")

    promoted = cli(b, "topic", "promote", topic_name, "--format", "json")
    assert promoted.returncode == 0, promoted.stderr
    doc = json.loads(promoted.stdout)
    assert doc["partitions"] == [{"partition": 0, "next_offset": end}]
    assert cli(b, "topic", "promote", topic_name).returncode != 0  # not a replica any more

    # New records get the next offsets; the group continues where it committed.
    acked = ops.produce(b.bootstrap, topic_name, [b"new-%d" % i * 40 for i in range(400)])
    assert acked == list(range(end, end + 400))
    rest: list[Any] = []
    consumer = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group,
                         "auto.offset.reset": "error", "enable.auto.commit": False})
    try:
        consumer.subscribe([topic_name])
        deadline = time.monotonic() + 60
        while (not rest or rest[-1].offset() < end + 399) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=200, timeout=2):
                assert msg.error() is None, msg.error()
                rest.append(msg)
    finally:
        consumer.close()
    assert [m.offset() for m in rest] == list(range(consumed[-1] + 1, end + 400))
    assert rest[-1].value() == b"new-399" * 40

    # Nothing archived is lost: the whole history, then the new records, from b.
    assert fetch_range(b, topic_name, 0, 0, end) == answer
    assert [m.offset for m in ops.consume(b.bootstrap, topic_name, 0, 0)] == list(range(end + 400))
    # b archives its new records into its own prefix.
    wait_until("b to archive past the promotion",
               lambda: storage_report(b.admin_port, topic_name)["partitions"][0][
                   "last_uploaded_offset"] >= end, timeout=60)
    report = storage_report(b.admin_port, topic_name)
    assert report["read_replica"] == "promoted"
    assert report["partitions"][0]["inherited_last_offset"] == end - 1
    assert report["partitions"][0]["earliest_offset"] == 0

    # c still serves the dead origin's archive, read-only; nobody wrote into the origin's prefix.
    assert fetch_range(c, topic_name, 0, 0, end) == answer
    assert latest(c, topic_name, 0) == end
    assert raw_produce(c, topic_name)[0] == ErrorCode.INVALID_TOPIC_EXCEPTION
    assert bucket_state(moto_s3, bucket, "origin/") == snapshot
    prefixes = {k.split("/", 1)[0] for k in moto_s3.objects(bucket)}
    assert prefixes <= {"origin", "replica-b", "replica-c"}, prefixes


def read_to(bootstrap: str, topic: str, end: int, isolation: str) -> list[bytes]:
    """Values of partition 0 from offset 0 until the consumer's position reaches ``end``."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "rr-txn-reader",
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "auto.offset.reset": "error"})
    tp = TopicPartition(topic, 0, 0)
    out: list[bytes] = []
    try:
        c.assign([tp])
        deadline = time.monotonic() + 60
        while c.position([TopicPartition(topic, 0)])[0].offset < end:
            assert time.monotonic() < deadline, (len(out), end)
            for msg in c.consume(num_messages=500, timeout=0.5):
                assert msg.error() is None, msg.error()
                out.append(bytes(msg.value() or b""))
    finally:
        c.close()
    return out


def test_read_committed_on_a_replica_skips_what_the_origin_aborted(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    from tests.support.txn import plain_produce, txn_producer

    bucket = moto_s3.new_bucket()
    origin = broker_factory(settings(moto_s3, bucket, "origin",
                                     **{"tiering.segment_max_upload_interval_ms": "1000"}))
    replica = broker_factory(settings(moto_s3, bucket, "replica-b"))
    ops.create_topic(origin.bootstrap, topic_name, 1,
                     {**TIERED, "segment.bytes": "32768", "local.retention.bytes": "32768"})
    long, short = (txn_producer(origin.bootstrap, f"{topic_name}-{n}") for n in ("l", "s"))
    committed: list[bytes] = []
    everything: list[bytes] = []
    pad = b"." * 900

    def send(p: Any, tag: str, n: int) -> list[bytes]:
        vs = [f"{tag}-{i}".encode() + pad for i in range(n)]
        for v in vs:
            p.produce(topic_name, v, partition=0)
        assert p.flush(30) == 0
        everything.extend(vs)
        return vs

    long.begin_transaction()
    send(long, "long-aborted", 5)  # open across many segments, aborted at the end
    for round_ in range(12):
        short.begin_transaction()
        vs = send(short, f"short{round_}", 8)
        if round_ % 3 == 2:
            short.abort_transaction(30)
        else:
            short.commit_transaction(30)
            committed.extend(vs)
    long.abort_transaction(30)
    plain_produce(origin.bootstrap, topic_name, 0, [b"plain-tail"])
    committed.append(b"plain-tail")
    everything.append(b"plain-tail")
    hw = latest(origin, topic_name, 0)
    wait_until("the origin to archive everything",
               lambda: storage_report(origin.admin_port, topic_name)["partitions"][0][
                   "last_uploaded_offset"] >= hw - 1, timeout=60)
    assert any(k.endswith(".txnindex") for k in moto_s3.objects(bucket))

    ops.create_topic(replica.bootstrap, topic_name, 1,
                     {"remote.readreplica": f"s3://{bucket}/origin"})
    assert latest(replica, topic_name, 0) == hw
    assert read_to(replica.bootstrap, topic_name, hw, "read_committed") == committed
    assert read_to(origin.bootstrap, topic_name, hw, "read_committed") == committed
    assert read_to(replica.bootstrap, topic_name, hw, "read_uncommitted") == everything

    # A transaction cannot add a replica's partition (its markers would land in the replica).
    p = txn_producer(replica.bootstrap, f"{topic_name}-on-replica")
    p.begin_transaction()
    p.produce(topic_name, b"x", partition=0)
    p.flush(10)
    with pytest.raises(KafkaException):
        p.commit_transaction(20)
    assert latest(replica, topic_name, 0) == hw
