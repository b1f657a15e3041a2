"""Tiered storage end to end, against moto's real S3 HTTP endpoint.

A topic with small segments and a tiny local retention is filled with a few MB by a real
client; once the local start offset has moved past 0, confluent-kafka, kafka-python and aiokafka
each replay it from the earliest offset: every record byte-identical and in order across the
local/remote boundary. ListOffsets -2/-4/-5, an old-timestamp seek, the bucket's consistency,
the read cache's bound, total retention and DeleteTopics are checked on the way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from kio.schema.list_offsets.v7.request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)

from tests.support import ops
from tests.support.broker import BrokerProcess
from tests.support.clients import DRIVERS
from tests.support.moto import (
    MotoS3,
    check_bucket_consistent,
    make_records,
    metric,
    metrics_text,
    produce,
    storage_report,
    wait_partition,
    wait_until,
)
from tests.support.wire import Wire

pytestmark = [pytest.mark.streamd_only]

TIERED = {
    "remote.storage.enable": "true",
    "segment.bytes": "131072",
    "local.retention.bytes": "262144",
}
CACHE_MAX = 1_000_000


def settings(moto: MotoS3, bucket: str, **extra: str) -> dict[str, str]:
    return moto.broker_settings(bucket) | {
        "tiering.upload_interval_ms": "250",
        "log.housekeeping_interval_ms": "250",
        **extra,
    }


SMALL_OBJECTS = {"tiering.merge_target_bytes": "262144"}
"""Adjacent segments merge into objects of 2-4 segments: several objects (and retention
steps) per test, whatever the upload timing."""


def list_offset(broker: BrokerProcess, topic: str, spec: int) -> int:
    with Wire(broker.address) as wire:
        resp = wire.call(
            ListOffsetsRequest(
                replica_id=-1,
                isolation_level=0,
                topics=(
                    ListOffsetsTopic(
                        name=topic,
                        partitions=(
                            ListOffsetsPartition(
                                partition_index=0, current_leader_epoch=-1, timestamp=spec
                            ),
                        ),
                    ),
                ),
            )
        )
    part = resp.topics[0].partitions[0]
    assert part.error_code == 0, part
    return int(part.offset)


def wait_settled(broker: BrokerProcess, topic: str) -> dict[str, Any]:
    """The partition's storage report once uploads and local retention have caught up."""
    keys = ("local_start_offset", "last_uploaded_offset", "pending_uploads")
    previous: list[Any] = [None]

    def settled() -> dict[str, Any] | None:
        report = storage_report(broker.admin_port, topic)["partitions"][0]
        now = tuple(report[k] for k in keys)
        if report["pending_uploads"] == 0 and now == previous[0]:
            return report  # type: ignore[no-any-return]
        previous[0] = now
        return None

    return wait_until("uploads and local retention to settle", settled, interval=0.7)  # type: ignore[no-any-return]


def dir_size(path: Path) -> int:
    """Bytes of cached chunks; files evicted while we look count as 0."""
    total = 0
    for entry in path.glob("*.chunk"):
        with contextlib.suppress(FileNotFoundError):
            total += entry.stat().st_size
    return total


def test_replay_from_the_archive_with_every_client(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    broker = broker_factory(
        settings(
            moto_s3,
            bucket,
            **SMALL_OBJECTS,
            **{
                "tiering.cache_max_bytes": str(CACHE_MAX),
                "tiering.cache_chunk_bytes": "131072",
            },
        )
    )
    ops.create_topic(broker.bootstrap, topic_name, 1, TIERED)
    records = make_records(8000)
    produce(broker.bootstrap, topic_name, records)
    wait_partition(
        broker,
        topic_name,
        "local start past 0 with several archived segments",
        lambda r: r["local_start_offset"] > 1000 and r["remote_segments"] >= 5,
    )
    report = wait_settled(broker, topic_name)
    local_start = report["local_start_offset"]
    assert report["high_watermark"] == len(records)
    assert report["errors"] == 0 and report["mode"] == "tiered"

    assert list_offset(broker, topic_name, -2) == 0
    assert list_offset(broker, topic_name, -4) == local_start
    tiered = list_offset(broker, topic_name, -5)
    assert tiered == report["last_uploaded_offset"] and tiered >= local_start - 1
    assert list_offset(broker, topic_name, -1) == len(records)

    cache_dir = broker.data_dir / "cache"
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], dir_size(cache_dir))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for name, driver_type in DRIVERS.items():
            driver = driver_type(broker.bootstrap)
            got = driver.consume(topic_name, 0, 0, len(records))
            assert [g.offset for g in got] == list(range(len(records))), name
            for g, rec in zip(got, records, strict=True):
                assert (g.key, g.value, g.headers, g.timestamp) == (
                    rec.key,
                    rec.value,
                    rec.headers,
                    rec.timestamp,
                ), f"{name}: record {g.offset} differs"
            old = records[123].timestamp
            assert driver.offset_for_time(topic_name, 0, old) == 123, name
            mid = records[local_start - 7].timestamp
            assert driver.offset_for_time(topic_name, 0, mid) == local_start - 7, name
    finally:
        stop.set()
        sampler.join()

    text = metrics_text(broker.admin_port)
    assert metric(text, "streamd_tiering_download_bytes_total") > CACHE_MAX
    assert metric(text, "streamd_tiering_cache_evictions_total") > 0
    assert metric(text, "streamd_tiering_cache_bytes") <= CACHE_MAX
    assert 0 < peak[0] <= CACHE_MAX, "the read cache exceeded tiering.cache_max_bytes"

    manifests = check_bucket_consistent(moto_s3, bucket)
    assert len(manifests) == 1 and manifests[0].last_uploaded_offset == tiered
    keys = moto_s3.objects(bucket)
    assert any(k.endswith(".log") for k in keys) and any(k.endswith(".index") for k in keys)
    assert any(k.endswith("/topic.json") for k in keys)


def test_total_retention_moves_earliest_and_clients_reset(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    broker = broker_factory(settings(moto_s3, bucket, **SMALL_OBJECTS))
    config = TIERED | {"segment.bytes": "65536", "local.retention.bytes": "131072",
                       "retention.bytes": "400000"}
    ops.create_topic(broker.bootstrap, topic_name, 1, config)
    records = make_records(4000, seed=11)
    produce(broker.bootstrap, topic_name, records)
    # Compare the bucket with the manifest only once nothing is in flight or due (no timing
    # involved, each is a fact the storage report states): every sealed segment is in the
    # manifest (no upload can be between its object PUT and its manifest PUT), retention has
    # nothing left to expire, the local start followed the remote start, and the objects
    # retention dropped are deleted.
    report = wait_partition(
        broker,
        topic_name,
        "remote start past 0 with uploads, retention and deletions done",
        lambda r: r["remote_start_offset"] > 0
        and r["high_watermark"] == len(records)
        and r["pending_uploads"] == 0
        and r["retention_due_offset"] == -1
        and r["earliest_offset"] == r["remote_start_offset"]
        and r["pending_deletes"] == 0,
    )
    earliest = list_offset(broker, topic_name, -2)
    assert earliest == report["remote_start_offset"] > 0
    manifests = check_bucket_consistent(moto_s3, bucket)
    segment_objects = [k for k in moto_s3.objects(bucket) if k.endswith(".log")]
    assert sorted(segment_objects) == sorted(s.key for s in manifests[0].segments)

    strict = ops.consumer(broker.bootstrap, **{"auto.offset.reset": "error"})
    try:
        strict.assign([TopicPartition(topic_name, 0, 0)])
        error = None
        deadline = time.monotonic() + 20
        while error is None and time.monotonic() < deadline:
            msg = strict.poll(0.5)
            if msg is not None and msg.error() is not None:
                error = msg.error()
        assert error is not None and error.code() == KafkaError._AUTO_OFFSET_RESET, error
    finally:
        strict.close()

    resetting = ops.consumer(broker.bootstrap, **{"auto.offset.reset": "earliest"})
    try:
        resetting.assign([TopicPartition(topic_name, 0, 0)])
        deadline = time.monotonic() + 20
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = resetting.poll(0.5)
            if msg is not None and msg.error() is not None:
                raise KafkaException(msg.error())
        assert msg is not None and msg.offset() == earliest
        assert msg.value() == records[earliest].value
    finally:
        resetting.close()


def test_delete_records_hides_archived_offsets_and_uploads_go_on(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    broker = broker_factory(settings(moto_s3, bucket))
    config = TIERED | {"segment.bytes": "65536", "local.retention.bytes": "131072"}
    ops.create_topic(broker.bootstrap, topic_name, 1, config)
    records = make_records(3000, seed=5)
    produce(broker.bootstrap, topic_name, records[:2000])
    wait_partition(broker, topic_name, "archived", lambda r: r["local_start_offset"] > 500)
    cut = 300  # archived only: below the local start
    tp = TopicPartition(topic_name, 0, cut)
    client = ops.admin(broker.bootstrap)  # referenced until its future resolves
    deleted = client.delete_records([tp], request_timeout=15)[tp].result(20)
    assert deleted.low_watermark == cut
    assert list_offset(broker, topic_name, -2) == cut
    produce(broker.bootstrap, topic_name, records[2000:])
    report = wait_partition(
        broker,
        topic_name,
        "uploads after DeleteRecords",
        lambda r: r["last_uploaded_offset"] > 2000 and r["pending_deletes"] == 0,
    )
    assert report["blocked"] is None and report["remote_start_offset"] == cut
    manifests = check_bucket_consistent(moto_s3, bucket)
    assert manifests[0].segments[0].base_offset <= cut <= manifests[0].segments[0].last_offset

    c = ops.consumer(broker.bootstrap, **{"auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic_name, 0, 0)])  # below the start: reset to `cut`
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 50 and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None:
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                got.append(msg)
        assert got and got[0].offset() == cut
        assert [m.value() for m in got] == [r.value for r in records[cut : cut + len(got)]]
    finally:
        c.close()


def test_delete_topic_removes_its_objects(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    broker = broker_factory(settings(moto_s3, bucket))
    ops.create_topic(broker.bootstrap, topic_name, 2, TIERED | {"segment.bytes": "65536"})
    produce(broker.bootstrap, topic_name, make_records(1500, seed=3))
    wait_until(
        "segments archived",
        lambda: any(k.endswith(".log") for k in moto_s3.objects(bucket)),
    )
    client = ops.admin(broker.bootstrap)
    client.delete_topics([topic_name], request_timeout=15)[topic_name].result(20)
    wait_until(
        "the topic's objects deleted (the cluster metadata archive stays)",
        lambda: [k for k in moto_s3.objects(bucket) if not k.startswith("cluster/")] == [],
        timeout=20,
    )
