"""streamd.metrics on prometheus_client: API names, per-topic series, topic filtering, other
layers' families, and every counter the tiering layer keeps reaching ``/metrics``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from streamd.log.manager import LogManager
from streamd.metrics import Metrics
from streamd.tiering.cache import ChunkCache
from streamd.tiering.local_store import LocalStore
from streamd.tiering.service import TieringService, TieringSettings
from streamd.tiering.stats import TieringStats

NAMES = {0: "Produce", 1: "Fetch"}


def samples(metrics: Metrics, allowed=None) -> dict[tuple[str, frozenset], float]:  # noqa: ANN001
    text = metrics.render(allowed).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_request_latency_is_labelled_by_api_name() -> None:
    m = Metrics(NAMES.get, version="9.9.9")
    m.count_request(0, 0.002)
    m.count_request(0, 0.004)
    m.count_request(1, 0.5)
    m.count_request(77, 0.001)
    got = samples(m)
    count = "streamd_kafka_request_duration_seconds_count"
    assert got[(count, frozenset({("api", "Produce")}))] == 2
    assert got[(count, frozenset({("api", "Fetch")}))] == 1
    assert got[(count, frozenset({("api", "unknown")}))] == 1
    assert got[("streamd_kafka_request_duration_seconds_sum", frozenset({("api", "Fetch")}))] == 0.5
    assert not any(dict(labels).get("api", "x").isdigit() for _, labels in got)
    assert got[("streamd_build_info", frozenset({("version", "9.9.9")}))] == 1
    assert any(name == "process_resident_memory_bytes" for name, _ in got)


def test_per_topic_bytes_and_records_and_totals() -> None:
    m = Metrics(NAMES.get)
    m.produced("a", 100, 3)
    m.produced("a", 50, 2)
    m.produced("b", 7, 1)
    m.fetched("a", 30)
    got = samples(m)
    assert got[("streamd_kafka_produced_bytes_total", frozenset({("topic", "a")}))] == 150
    assert got[("streamd_kafka_produced_records_total", frozenset({("topic", "a")}))] == 5
    assert got[("streamd_kafka_produced_records_total", frozenset({("topic", "b")}))] == 1
    assert got[("streamd_kafka_fetched_bytes_total", frozenset({("topic", "a")}))] == 30
    assert got[("streamd_produced_bytes_total", frozenset())] == 157
    assert got[("streamd_fetched_bytes_total", frozenset())] == 30
    m.retain_topics({"b"})
    got = samples(m)
    assert ("streamd_kafka_produced_bytes_total", frozenset({("topic", "a")})) not in got
    assert ("streamd_kafka_fetched_bytes_total", frozenset({("topic", "a")})) not in got
    assert got[("streamd_kafka_produced_bytes_total", frozenset({("topic", "b")}))] == 7


def test_topic_filter_drops_only_hidden_topic_series() -> None:
    m = Metrics(NAMES.get)
    m.produced("open", 1, 1)
    m.produced("secret", 1, 1)
    m.add_collector(lambda: [("streamd_tiering_remote_bytes", "h", "gauge",
                              [({"topic": "secret", "partition": "0"}, 5)])])
    got = samples(m, lambda topic: topic == "open")
    topics = {dict(labels).get("topic") for _, labels in got}
    assert "open" in topics and "secret" not in topics
    assert ("streamd_produced_bytes_total", frozenset()) in got


def test_store_calls_by_verb_and_outcome() -> None:
    m = Metrics(NAMES.get)
    m.store_call("put_file", "ok", 0.2)
    m.store_call("get_range", "error", 0.01)
    got = samples(m)
    name = "streamd_object_store_request_duration_seconds_count"
    assert got[(name, frozenset({("verb", "put_file"), ("outcome", "ok")}))] == 1
    assert got[(name, frozenset({("verb", "get_range"), ("outcome", "error")}))] == 1


def test_every_tiering_counter_is_exported(tmp_path: Path) -> None:
    """Each TieringStats field moves some exported sample: nothing is counted but hidden
    (manifest writes and delete errors were counted and never exported)."""
    logs = LogManager(tmp_path / "data")
    logs.load()
    service = TieringService(
        LocalStore(tmp_path / "bucket", fsync=False),
        logs,
        ChunkCache(tmp_path / "cache", max_bytes=1 << 20, chunk_size=1024),
        manifest_dir=tmp_path / "data" / "tiering",
        settings=TieringSettings(),
    )
    m = Metrics(NAMES.get)
    m.add_collector(service.metric_families)
    before = samples(m)
    for index, f in enumerate(dataclasses.fields(TieringStats)):
        setattr(service.stats, f.name, 1000 + index)
    after = samples(m)
    moved = {k for k in after if after[k] != before.get(k)}
    values = {after[k] for k in moved}
    missing = [
        f.name for i, f in enumerate(dataclasses.fields(TieringStats)) if 1000 + i not in values
    ]
    assert not missing, f"TieringStats fields not exported: {missing}"
