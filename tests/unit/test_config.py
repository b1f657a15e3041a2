"""Broker config: static loading and the dynamic layers (Kafka's dynamic broker configs)."""

import json
from pathlib import Path

import pytest

from streamd import config as config_mod
from streamd.config import BrokerConfig
from streamd.errors import ConfigError


def load(tmp_path: Path, *sets: str) -> BrokerConfig:
    return config_mod.load(None, [f"data_dir={tmp_path}", *sets], environ={})


def test_precedence_broker_over_cluster_over_static_over_default(tmp_path: Path) -> None:
    cfg = load(tmp_path, "default_partitions=2", "defaults.retention.ms=1000")
    assert cfg.origins("default_partitions") == [("static", 2), ("default", 1)]
    cfg.replace_layer("cluster", {"default_partitions": "3", "defaults.retention.ms": "2000"})
    assert cfg["default_partitions"] == 3 and cfg.topic_defaults["retention.ms"] == "2000"
    cfg.replace_layer("broker", {"default_partitions": "4"})
    assert cfg["default_partitions"] == 4
    assert [o for o, _ in cfg.origins("default_partitions")] == [
        "broker",
        "cluster",
        "static",
        "default",
    ]
    cfg.replace_layer("broker", {})
    cfg.replace_layer("cluster", {})
    assert cfg["default_partitions"] == 2 and cfg.topic_defaults["retention.ms"] == "1000"
    assert cfg.origins("fsync") == [("default", "always")]


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("data_dir", "/x", "read-only"),
        ("tiering.store", "s3://b", "read-only"),
        ("no.such", "1", "unknown broker config"),
        ("log.retention.ms", "1", "defaults.retention.ms"),
        ("num.partitions", "1", "default_partitions"),
        ("default_partitions", "0", "positive"),
        ("log.housekeeping_interval_ms", "-5", "positive"),
        ("log.level", "LOUD", "DEBUG"),
        ("defaults.no.such", "1", "not a topic config"),
        ("defaults.segment.ms", "0", "segment.ms"),
    ],
)
def test_what_cannot_change_at_runtime_names_the_key(
    tmp_path: Path, key: str, value: str, words: str
) -> None:
    cfg = load(tmp_path)
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        cfg.check_dynamic(key, value)


def test_a_refused_change_leaves_everything_as_it_was(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    seen: list[frozenset[str]] = []
    cfg.dynamic.appliers.append(seen.append)

    def refuse_small_segments(values: object, topic_defaults: dict[str, str]) -> None:
        if int(topic_defaults.get("segment.ms", "604800000")) < 1000:
            raise ConfigError("too small")

    cfg.dynamic.checks.append(refuse_small_segments)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        cfg.replace_layer("broker", {"defaults.segment.ms": "5", "default_partitions": "7"})
    assert cfg["default_partitions"] == 1 and "segment.ms" not in cfg.topic_defaults
    assert cfg.layer("broker") == {} and seen == []
    with pytest.raises(ConfigError, match="group.min.session.timeout.ms"):
        cfg.replace_layer("broker", {"group.min.session.timeout.ms": "3600000"})
    changed = cfg.replace_layer("broker", {"default_partitions": "7", "log.level": ""})
    assert changed == {"default_partitions"} and seen == [changed]


def test_persisted_values_come_back_and_stale_ones_are_skipped(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    cfg.replace_layer("broker", {"default_partitions": "5"})
    cfg.replace_layer("cluster", {"defaults.retention.ms": "5000"})
    doc = json.loads(cfg.dynamic_document())
    doc["broker"]["data_dir"] = "/elsewhere"  # not dynamic (an older or edited file)
    doc["cluster"]["tiering.upload_interval_ms"] = "soon"
    cfg.dynamic_path.write_text(json.dumps(doc))

    again = load(tmp_path, "default_partitions=2")
    warnings = again.load_dynamic()
    assert len(warnings) == 2 and all("ignoring dynamic config" in w for w in warnings)
    assert again["default_partitions"] == 5, "a dynamic value outlives the file's"
    assert again["data_dir"] == str(tmp_path)
    assert again.topic_defaults["retention.ms"] == "5000"


def test_unreadable_dynamic_file_stops_startup(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    cfg.dynamic_path.write_text("{not json")
    with pytest.raises(ConfigError, match="broker-configs.json"):
        cfg.load_dynamic()
