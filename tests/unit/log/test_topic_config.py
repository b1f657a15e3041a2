import pytest

from streamd.errors import InvalidConfig
from streamd.log.topic_config import TOPIC_CONFIG_KEYS, TopicConfig


def test_defaults_match_kafka() -> None:
    c = TopicConfig.from_overrides({}, {})
    assert c.cleanup_policy == "delete"
    assert c.segment_bytes == 1 << 30
    assert c.retention_ms == 7 * 24 * 3600 * 1000
    assert c.retention_bytes == -1
    assert c.local_retention_ms == -2 and c.effective_local_retention_ms == c.retention_ms
    assert c.max_message_bytes == 1048588
    assert c.message_timestamp_type == "CreateTime"
    assert not c.remote_storage_enable
    assert set(TOPIC_CONFIG_KEYS) == {name for name, _, _ in c.describe()}


def test_precedence_and_describe() -> None:
    c = TopicConfig.from_overrides(
        {"retention.ms": "1000", "segment.bytes": "4096"},
        {
            "segment.bytes": "2048",
            "message.timestamp.type": "logappendtime",
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
        ({"retention.ms": "soon"}, "retention.ms"),
        ({"retention.ms": "-5"}, "retention.ms"),
        ({"segment.bytes": "13"}, "segment.bytes"),
        ({"cleanup.policy": "purge"}, "cleanup.policy"),
        ({"remote.storage.enable": "yes"}, "remote.storage.enable"),
        ({"message.timestamp.type": "Now"}, "message.timestamp.type"),
        ({"retention.ms": "1000", "local.retention.ms": "2000"}, "local.retention.ms"),
    ],
)
def test_invalid_values_name_the_key(overrides: dict[str, str], key: str) -> None:
    with pytest.raises(InvalidConfig, match=key.replace(".", r"\.")):
        TopicConfig.from_overrides({}, overrides)


def test_bad_broker_default_rejected() -> None:
    with pytest.raises(InvalidConfig, match="segment.ms"):
        TopicConfig.from_overrides({"segment.ms": "0"}, {})


def test_compact_is_accepted() -> None:
    c = TopicConfig.from_overrides({}, {"cleanup.policy": "delete,compact"})
    assert c.cleanup_policy == "compact,delete"
