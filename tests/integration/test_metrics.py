"""``/metrics`` through prometheus_client against a real broker with tiered data (issue 18
item 8): request latency per API name, per-topic produce/fetch series, object-store calls by
verb and outcome (uploads, remote reads), process metrics, build info, the S3 backend's own
request counts, and every tiering counter, including manifest load failures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tests.support import admin_http
from tests.support.broker import BrokerProcess
from tests.support.moto import MotoS3, wait_until
from tests.support.tiered import TieredTopic, fill_tiered_topic, tiered_settings

pytestmark = [pytest.mark.streamd_only]


def scrape(broker: BrokerProcess) -> dict[tuple[str, frozenset], float]:
    reply = admin_http.get(broker.admin_port, "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


def total(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


@pytest.fixture(scope="module")
def tiered(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TieredTopic]:
    bucket = moto_s3.new_bucket()
    broker = BrokerProcess(
        tmp_path_factory.mktemp("metrics") / "data", tiered_settings(moto_s3, bucket)
    )
    broker.start()
    try:
        yield fill_tiered_topic(broker, bucket, "metered")
    finally:
        broker.close()


def read_all(broker: BrokerProcess, topic: str, count: int) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "metrics-test",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    got = 0
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        while got < count:
            for msg in consumer.consume(500, timeout=5):
                assert msg.error() is None, msg.error()
                got += 1
    finally:
        consumer.close()
    return got


def test_metrics_cover_requests_topics_store_and_process(tiered: TieredTopic) -> None:
    broker, topic = tiered.broker, tiered.topic
    assert read_all(broker, topic, len(tiered.records)) == len(tiered.records)
    got = scrape(broker)

    count = "streamd_kafka_request_duration_seconds_count"
    for api in ("Produce", "Fetch", "Metadata", "CreateTopics"):
        assert total(got, count, api=api) >= 1, api
    assert not any(
        dict(labels).get("api", "x").isdigit() for name, labels in got if name.startswith(
            "streamd_kafka_request_duration")
    ), "API labels are names, not numeric keys"

    assert total(got, "streamd_kafka_produced_records_total", topic=topic) == len(tiered.records)
    produced = sum(len(r.value or b"") for r in tiered.records)
    assert total(got, "streamd_kafka_produced_bytes_total", topic=topic) > produced
    assert total(got, "streamd_kafka_fetched_bytes_total", topic=topic) > produced

    store = "streamd_object_store_request_duration_seconds_count"
    assert total(got, store, verb="put_file", outcome="ok") >= 2, "segment uploads are timed"
    assert total(got, store, verb="get_range", outcome="ok") >= 1, "remote reads are timed"
    assert total(got, store, verb="put", outcome="ok") >= 1
    assert total(got, "streamd_tiering_bucket_requests_total") >= total(got, store)
    assert ("streamd_s3_retries_total", frozenset()) in got

    assert total(got, "streamd_tiering_manifest_writes_total") >= 1
    assert ("streamd_tiering_delete_errors_total", frozenset()) in got
    assert total(got, "streamd_tiering_remote_reads_total") >= 1
    assert total(got, "process_resident_memory_bytes") > 0
    assert total(got, "process_open_fds") > 0
    assert any(name == "streamd_build_info" for name, _ in got)


def test_manifest_load_failures_are_counted(
    moto_s3: MotoS3, tiered: TieredTopic
) -> None:
    """A manifest that cannot be loaded at startup counts as a manifest error (it stayed 0)."""
    broker = tiered.broker
    keys = [k for k in moto_s3.objects(tiered.bucket) if k.endswith("/manifest.json")]
    assert keys
    broker.stop()
    for key in keys:
        moto_s3.admin.put_object(Bucket=tiered.bucket, Key=key, Body=b"{not json")
    _drop_local_copies(broker)
    broker.start()
    wait_until(
        "manifest load failures in /metrics",
        lambda: total(scrape(broker), "streamd_tiering_manifest_errors_total") >= len(keys),
    )


def _drop_local_copies(broker: BrokerProcess) -> None:
    """Local manifest copies would let the broker serve without the bucket's; remove them so
    the startup load reads the bucket."""
    for path in (broker.data_dir / "tiering").rglob("*.json"):
        path.unlink()
