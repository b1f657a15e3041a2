import json
from pathlib import Path

import pytest

from streamd.errors import InvalidConfig
from streamd.log.topic_config import TOPIC_CONFIG_KEYS, TopicConfig

INT64_MAX = str(2**63 - 1)

KAFKA_3_9_DEFAULTS = {
    "cleanup.policy": "delete",
    "compression.gzip.level": "-1",
    "compression.lz4.level": "9",
    "compression.type": "producer",
    "compression.zstd.level": "3",
    "delete.retention.ms": "86400000",
    "file.delete.delay.ms": "60000",
    "flush.messages": INT64_MAX,
    "flush.ms": INT64_MAX,
    "follower.replication.throttled.replicas": "",
    "index.interval.bytes": "4096",
    "leader.replication.throttled.replicas": "",
    "local.retention.bytes": "-2",
    "local.retention.ms": "-2",
    "max.compaction.lag.ms": INT64_MAX,
    "max.message.bytes": "1048588",
    "message.downconversion.enable": "true",
    "message.format.version": "3.0-IV1",
    "message.timestamp.after.max.ms": INT64_MAX,
    "message.timestamp.before.max.ms": INT64_MAX,
    "message.timestamp.difference.max.ms": INT64_MAX,
    "message.timestamp.type": "CreateTime",
    "min.cleanable.dirty.ratio": "0.5",
    "min.compaction.lag.ms": "0",
    "min.insync.replicas": "1",
    "preallocate": "false",
    "remote.log.copy.disable": "false",
    "remote.log.delete.on.disable": "false",
    "remote.storage.enable": "false",
    "retention.bytes": "-1",
    "retention.ms": "604800000",
    "segment.bytes": "1073741824",
    "segment.index.bytes": "10485760",
    "segment.jitter.ms": "0",
    "segment.ms": "604800000",
    "unclean.leader.election.enable": "false",
}
"""Every topic config of Apache Kafka 3.9 (``LogConfig``) with its default, as DescribeConfigs
prints it."""


def test_every_kafka_3_9_topic_config_with_its_default() -> None:
    c = TopicConfig.from_overrides({}, {})
    assert dict(c.as_dict()) == KAFKA_3_9_DEFAULTS
    assert set(TOPIC_CONFIG_KEYS) == {name for name, _, _ in c.describe()}


def test_provisioning_tools_settings_are_accepted() -> None:
    c = TopicConfig.from_overrides(
        {},
        {
            "compression.type": "lz4",
            "delete.retention.ms": "3600000",
            "flush.ms": "1000",
            "flush.messages": "10",
            "min.cleanable.dirty.ratio": "0.1",
            "min.compaction.lag.ms": "100",
            "max.compaction.lag.ms": "1000",
            "file.delete.delay.ms": "0",
            "message.format.version": "2.8.1",
            "segment.jitter.ms": "5",
            "unclean.leader.election.enable": "TRUE",
            "leader.replication.throttled.replicas": "0:1, 1:1",
            "follower.replication.throttled.replicas": "*",
            "preallocate": "true",
            "message.downconversion.enable": "false",
        },
    )
    assert c.compression_type == "lz4" and c.target_codec == 3 and c.target_level == 9
    assert c.min_cleanable_dirty_ratio == 0.1
    assert c.unclean_leader_election_enable is True
    described = {name: value for name, value, _ in c.describe()}
    assert described["leader.replication.throttled.replicas"] == "0:1,1:1"
    assert described["message.format.version"] == "2.8.1"


def test_precedence_and_describe() -> None:
    c = TopicConfig.from_overrides(
        {"retention.ms": "1000", "segment.bytes": "4096"},
        {
            "segment.bytes": "2048",
            "message.timestamp.type": "LogAppendTime",
            "remote.storage.enable": "TRUE",
        },
    )
    assert (c.retention_ms, c.segment_bytes) == (1000, 2048)
    assert c.log_append_time and c.remote_storage_enable
    described = {name: (value, default) for name, value, default in c.describe()}
    assert described["segment.bytes"] == ("2048", False)
    assert described["retention.ms"] == ("1000", True)
    assert described["remote.storage.enable"] == ("true", False)
    assert described["message.timestamp.type"] == ("LogAppendTime", False)
    assert c.source("retention.ms") == "broker" and c.source("segment.ms") == "default"


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"no.such.key": "1"}, "no.such.key"),
        ({"log.retention.ms": "1"}, "log.retention.ms"),  # a broker key, not a topic key
        ({"retention.ms": "soon"}, "retention.ms"),
        ({"retention.ms": "-5"}, "retention.ms"),
        ({"retention.ms": "1_000"}, "retention.ms"),
        ({"segment.bytes": "13"}, "segment.bytes"),
        ({"max.message.bytes": "2147483648"}, "max.message.bytes"),
        ({"flush.ms": "9223372036854775808"}, "flush.ms"),
        ({"cleanup.policy": "purge"}, "cleanup.policy"),
        ({"cleanup.policy": "delete,"}, "cleanup.policy"),
        ({"cleanup.policy": "Delete"}, "cleanup.policy"),
        ({"remote.storage.enable": "yes"}, "remote.storage.enable"),
        ({"message.timestamp.type": "Now"}, "message.timestamp.type"),
        ({"message.timestamp.type": "logappendtime"}, "message.timestamp.type"),
        ({"compression.type": "LZ4"}, "compression.type"),
        ({"compression.type": "brotli"}, "compression.type"),
        ({"compression.gzip.level": "0"}, "compression.gzip.level"),
        ({"compression.gzip.level": "10"}, "compression.gzip.level"),
        ({"compression.lz4.level": "18"}, "compression.lz4.level"),
        ({"compression.zstd.level": "-131073"}, "compression.zstd.level"),
        ({"min.cleanable.dirty.ratio": "1.5"}, "min.cleanable.dirty.ratio"),
        ({"min.cleanable.dirty.ratio": "half"}, "min.cleanable.dirty.ratio"),
        ({"min.insync.replicas": "0"}, "min.insync.replicas"),
        ({"message.format.version": "5.0"}, "message.format.version"),
        ({"message.timestamp.before.max.ms": "-1"}, "message.timestamp.before.max.ms"),
        ({"leader.replication.throttled.replicas": "x"}, "replication.throttled.replicas"),
        ({"segment.index.bytes": "3"}, "segment.index.bytes"),
        ({"max.compaction.lag.ms": "0"}, "max.compaction.lag.ms"),
        ({"min.compaction.lag.ms": "10", "max.compaction.lag.ms": "5"}, "min.compaction.lag.ms"),
        (
            {"remote.storage.enable": "true", "retention.ms": "1000", "local.retention.ms": "2000"},
            "local.retention.ms",
        ),
        (
            {
                "remote.storage.enable": "true",
                "remote.log.copy.disable": "true",
                "retention.bytes": "1000",
                "local.retention.bytes": "500",
            },
            "local.retention.bytes",
        ),
    ],
)
def test_invalid_values_name_the_key(overrides: dict[str, str], key: str) -> None:
    with pytest.raises(InvalidConfig, match=key.replace(".", r"\.")):
        TopicConfig.from_overrides({}, overrides)


@pytest.mark.parametrize(
    "key, value",
    [
        ("message.format.version", "0.10.2-IV0"),
        ("message.format.version", "3.9"),
        ("message.format.version", "4.0-IV1"),
        ("compression.gzip.level", "9"),
        ("compression.zstd.level", "-131072"),
        ("cleanup.policy", ""),  # Kafka 3.9 accepts an empty list
        ("cleanup.policy", " compact , delete "),
        ("retention.bytes", "-7"),  # no lower bound in Kafka
        ("follower.replication.throttled.replicas", ""),
    ],
)
def test_kafka_accepts_these_edges(key: str, value: str) -> None:
    TopicConfig.from_overrides({}, {key: value})


def test_local_retention_is_checked_against_the_total_only_for_tiered_topics() -> None:
    c = TopicConfig.from_overrides({}, {"retention.ms": "1000", "local.retention.ms": "2000"})
    assert c.local_retention_ms == 2000
    with pytest.raises(InvalidConfig, match=r"local\.retention\.ms"):
        TopicConfig.from_overrides({"retention.ms": "1000", "local.retention.ms": "2000"}, {})


def test_without_the_delete_policy_nothing_is_removed() -> None:
    compact = TopicConfig.from_overrides({}, {"cleanup.policy": "compact", "retention.ms": "5"})
    assert compact.retention_limits == (-1, -1)
    assert compact.local_retention_limits == (-1, -1)
    both = TopicConfig.from_overrides({}, {"cleanup.policy": "compact,delete", "retention.ms": "5"})
    assert both.retention_limits == (5, -1)
    assert TopicConfig.from_overrides({}, {"cleanup.policy": ""}).retention_limits == (-1, -1)


def test_timestamp_limits_fall_back_to_the_deprecated_difference() -> None:
    c = TopicConfig.from_overrides({}, {"message.timestamp.difference.max.ms": "100"})
    assert (c.timestamp_before_max_ms, c.timestamp_after_max_ms) == (100, 100)
    c = TopicConfig.from_overrides(
        {},
        {"message.timestamp.difference.max.ms": "100", "message.timestamp.after.max.ms": "7"},
    )
    assert (c.timestamp_before_max_ms, c.timestamp_after_max_ms) == (100, 7)


def test_bad_broker_default_rejected() -> None:
    with pytest.raises(InvalidConfig, match="segment.ms"):
        TopicConfig.from_overrides({"segment.ms": "0"}, {})


def test_cleanup_policy_keeps_kafkas_list_form() -> None:
    c = TopicConfig.from_overrides({}, {"cleanup.policy": "delete, compact"})
    assert c.cleanup_policy == "delete,compact"
    assert c.deletes


def test_overrides_stored_by_older_versions_are_upgraded_to_kafkas_form() -> None:
    from streamd.log.topic_config import upgrade_stored

    stored = {
        "message.timestamp.type": "logappendtime",
        "cleanup.policy": "Delete, COMPACT",
        "retention.ms": "86_400_000",
        "segment.bytes": "4096",
        "no.such": "x",
    }
    upgraded = upgrade_stored(stored)
    assert upgraded == {
        "message.timestamp.type": "LogAppendTime",
        "cleanup.policy": "compact,delete",
        "retention.ms": "86400000",
        "segment.bytes": "4096",
        "no.such": "x",
    }
    del upgraded["no.such"]
    assert TopicConfig.from_overrides({}, upgraded).log_append_time


async def test_a_topic_stored_with_an_old_spelling_still_opens(tmp_path: Path) -> None:
    from streamd.log.fsync import FsyncPolicy
    from streamd.log.manager import LogManager

    m = LogManager(tmp_path, fsync=FsyncPolicy.parse("never"))
    m.load()
    m.create_topic("old", 1, {"retention.ms": "1000"})
    await m.close()
    meta_path = tmp_path / "topics" / "old" / "topic.json"
    meta = json.loads(meta_path.read_text())
    meta["overrides"] = {"message.timestamp.type": "logappendtime"}
    meta_path.write_text(json.dumps(meta))
    again = LogManager(tmp_path, fsync=FsyncPolicy.parse("never"))
    again.load()
    topic = again.get("old")
    assert topic is not None and topic.config.log_append_time
    await again.close()


def test_a_compacted_topic_may_be_tiered() -> None:
    """Beyond Kafka (KIP-405 refuses it): compacted topics are archived, see
    streamd.tiering.recompact."""
    config = TopicConfig.from_overrides(
        {}, {"remote.storage.enable": "true", "cleanup.policy": "compact,delete"}
    )
    assert config.compact and config.remote_storage_enable
