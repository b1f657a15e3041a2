"""DescribeLogDirs (API 35) with kafka-python and on the wire, and the admin API's
``/v1/logdirs`` that adds the archive's size per partition."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient
from kio.schema.describe_log_dirs.v4.request import DescribableLogDirTopic, DescribeLogDirsRequest
from kio.schema.types import TopicName
from kio.static.primitive import i32

from tests.support import ops
from tests.support.broker import BrokerProcess
from tests.support.moto import wait_partition
from tests.support.wire import Wire


def segment_bytes(broker: BrokerProcess, topic: str, partition: int) -> int:
    return sum(p.stat().st_size for p in (broker.topics_dir / topic / str(partition)).glob("*.log"))


@pytest.mark.streamd_only
def test_kafka_python_sees_each_partitions_local_size(
    broker: BrokerProcess, topic_name: str
) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 2)
    ops.produce(broker.bootstrap, topic_name, [b"x" * 500] * 20, partition=1, flush_each=True)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        (answer,) = admin.describe_log_dirs({topic_name: [0, 1]})
    finally:
        admin.close()
    (log_dir,) = answer["log_dirs"]
    assert log_dir["error_code"] == 0
    assert log_dir["log_dir"] == str(broker.topics_dir)
    (topic,) = log_dir["topics"]
    sizes = {p["partition_index"]: p["partition_size"] for p in topic["partitions"]}
    assert sizes == {0: 0, 1: segment_bytes(broker, topic_name, 1)}
    assert sizes[1] > 20 * 500
    assert all(p["offset_lag"] == 0 for p in topic["partitions"])


def test_wire_v4_filters_and_reports_the_filesystem(broker: BrokerProcess, topic_name: str) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 3)
    request = DescribeLogDirsRequest(
        topics=(
            DescribableLogDirTopic(topic=TopicName(topic_name), partitions=(i32(2), i32(7))),
            DescribableLogDirTopic(topic=TopicName(f"{topic_name}-none"), partitions=(i32(0),)),
        )
    )
    with Wire(broker.address) as wire:
        response = wire.call(request)
    assert response.error_code == 0
    (result,) = response.results
    assert result.total_bytes > 0 and 0 <= result.usable_bytes <= result.total_bytes
    assert [(t.name, [p.partition_index for p in t.partitions]) for t in result.topics] == [
        (topic_name, [2])
    ]
    with Wire(broker.address) as wire:
        everything = wire.call(DescribeLogDirsRequest(topics=None))
    names = {t.name for t in everything.results[0].topics}
    assert topic_name in names


def archived_bytes(broker: BrokerProcess, topic: str, last_uploaded: int) -> int:
    """Bytes of the local segments up to ``last_uploaded`` (uploads take whole segments)."""
    segments = (broker.topics_dir / topic / "0").glob("*.log")
    return sum(p.stat().st_size for p in segments if int(p.stem) <= last_uploaded)


def logdirs(broker: BrokerProcess) -> dict[str, Any]:
    url = f"http://{broker.host}:{broker.admin_port}/v1/logdirs"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


@pytest.mark.streamd_only
def test_admin_api_adds_the_archive_size(
    broker_factory: Callable[..., BrokerProcess], topic_name: str
) -> None:
    broker = broker_factory({"tiering.upload_interval_ms": "200"})
    ops.create_topic(
        broker.bootstrap,
        topic_name,
        1,
        {"remote.storage.enable": "true", "segment.bytes": "4096"},
    )
    ops.produce(broker.bootstrap, topic_name, [b"y" * 1000] * 30, flush_each=True)

    def entry() -> dict[str, Any]:
        (found,) = [p for p in logdirs(broker)["partitions"] if p["topic"] == topic_name]
        return found

    # Each 4096-byte segment holds three records (3213 bytes) and an upload round takes what is
    # sealed at that moment, so the archive grows a segment or a few at a time: compare once
    # nothing is pending and the nine segments before the last (offsets 0-26) are archived.
    storage = wait_partition(
        broker,
        topic_name,
        "every sealed segment archived",
        lambda r: r["last_uploaded_offset"] >= 26 and r["pending_uploads"] == 0,
    )
    report = logdirs(broker)
    assert report["log_dir"] == str(broker.topics_dir) and report["total_bytes"] > 0
    assert entry()["size_bytes"] == segment_bytes(broker, topic_name, 0)
    archived = archived_bytes(broker, topic_name, storage["last_uploaded_offset"])
    assert entry()["archive_bytes"] == storage["remote_bytes"] == archived >= 9 * 3000
