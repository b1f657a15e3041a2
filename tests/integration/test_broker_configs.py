"""Dynamic broker configs (Kafka's AlterConfigs / IncrementalAlterConfigs on BROKER resources).

Keys that can change at runtime are set through confluent-kafka's AdminClient and through
``streamd cluster config set``; a change must take effect at once (an auto-created topic gets
the new partition count, a topic without override follows the new default), be described with
Kafka's sources and synonyms, and survive a restart. Read-only and unknown keys fail with
INVALID_CONFIG and a message naming the key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    ResourceType,
)
from kio.schema.describe_configs.v4.request import (
    DescribeConfigsRequest,
    DescribeConfigsResource,
)
from kio.schema.incremental_alter_configs.v1.request import (
    AlterableConfig,
    AlterConfigsResource,
    IncrementalAlterConfigsRequest,
)
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.types import TopicName
from kio.static.primitive import i8

from tests.support import ops
from tests.support.broker import REPO_ROOT, BrokerProcess
from tests.support.wire import Wire

pytestmark = [pytest.mark.streamd_only]

INVALID_CONFIG = 40


def incremental(
    bootstrap: str, resource_type: ResourceType, name: str, *entries: ConfigEntry
) -> None:
    resource = ConfigResource(resource_type, name, incremental_configs=list(entries))
    client = ops.admin(bootstrap)
    client.incremental_alter_configs([resource], request_timeout=15)[resource].result(20)


def set_op(key: str, value: str | None) -> ConfigEntry:
    return ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)


def delete_op(key: str) -> ConfigEntry:
    return ConfigEntry(key, None, incremental_operation=AlterConfigOpType.DELETE)


def describe(bootstrap: str, resource_type: ResourceType, name: str) -> dict[str, Any]:
    resource = ConfigResource(resource_type, name)
    client = ops.admin(bootstrap)
    return client.describe_configs([resource], request_timeout=15)[resource].result(20)  # type: ignore[no-any-return]


def cli(broker: BrokerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env.update(STREAMD_BROKERS=broker.bootstrap, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "streamd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
    )


def auto_create(broker: BrokerProcess, topic: str) -> int:
    """Metadata with auto-creation for ``topic``; the partition count it answers with."""
    with Wire(broker.address) as wire:
        response = wire.call(
            MetadataRequest(
                topics=(MetadataRequestTopic(topic_id=None, name=TopicName(topic)),),
                allow_auto_topic_creation=True,
                include_topic_authorized_operations=False,
            )
        )
    (entry,) = response.topics
    assert entry.error_code == 0, entry.error_code
    return len(entry.partitions)


def test_dynamic_keys_apply_at_once_and_survive_a_restart(
    broker_factory: Callable[..., BrokerProcess], topic_name: str
) -> None:
    broker = broker_factory({"auto_create_topics": "true"})
    node = "0"
    ops.create_topic(broker.bootstrap, topic_name, 1)

    incremental(
        broker.bootstrap,
        ResourceType.BROKER,
        node,
        set_op("default_partitions", "3"),
        set_op("defaults.retention.ms", "3600000"),
    )
    assert auto_create(broker, f"{topic_name}-auto") == 3

    topic = describe(broker.bootstrap, ResourceType.TOPIC, topic_name)["retention.ms"]
    assert topic.value == "3600000"
    assert topic.source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    assert "defaults.retention.ms" in topic.synonyms

    configs = describe(broker.bootstrap, ResourceType.BROKER, node)
    assert configs["default_partitions"].value == "3"
    assert configs["default_partitions"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    assert not configs["default_partitions"].is_read_only
    assert configs["data_dir"].is_read_only
    assert configs["auto_create_topics"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    assert configs["fsync"].source == ConfigSource.DEFAULT_CONFIG.value

    broker.restart()
    assert auto_create(broker, f"{topic_name}-again") == 3
    assert describe(broker.bootstrap, ResourceType.TOPIC, topic_name)["retention.ms"].value == (
        "3600000"
    )
    incremental(broker.bootstrap, ResourceType.BROKER, node, delete_op("default_partitions"))
    assert auto_create(broker, f"{topic_name}-back") == 1
    broker.restart()
    assert auto_create(broker, f"{topic_name}-still") == 1
    persisted = json.loads((broker.data_dir / "broker-configs.json").read_text())
    assert persisted["broker"] == {"defaults.retention.ms": "3600000"}


def wire_describe(broker: BrokerProcess, name: str) -> list[Any]:
    """DescribeConfigs of a BROKER entity on the wire (confluent-kafka refuses the name "",
    Kafka's cluster-wide default entity)."""
    request = DescribeConfigsRequest(
        resources=(
            DescribeConfigsResource(
                resource_type=i8(4), resource_name=name, configuration_keys=None
            ),
        ),
        include_synonyms=True,
        include_documentation=False,
    )
    with Wire(broker.address) as wire:
        (result,) = wire.call(request).results
    assert result.error_code == 0, result.error_message
    return list(result.configs)


def wire_set(broker: BrokerProcess, name: str, key: str, value: str) -> None:
    request = IncrementalAlterConfigsRequest(
        resources=(
            AlterConfigsResource(
                resource_type=i8(4),
                resource_name=name,
                configs=(AlterableConfig(name=key, config_operation=i8(0), value=value),),
            ),
        ),
        validate_only=False,
    )
    with Wire(broker.address) as wire:
        (result,) = wire.call(request).responses
    assert result.error_code == 0, result.error_message


def test_cluster_default_entity_lists_only_what_is_set(
    broker_factory: Callable[..., BrokerProcess], topic_name: str
) -> None:
    broker = broker_factory()
    assert wire_describe(broker, "") == []
    wire_set(broker, "", "defaults.segment.ms", "60000")
    (entry,) = wire_describe(broker, "")
    assert (entry.name, entry.value, entry.config_source, entry.read_only) == (
        "defaults.segment.ms",
        "60000",
        ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value,
        False,
    )
    ops.create_topic(broker.bootstrap, topic_name, 1)
    described = describe(broker.bootstrap, ResourceType.TOPIC, topic_name)["segment.ms"]
    assert described.value == "60000"
    assert described.source == ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value
    # this broker's own value wins over the cluster default; both are synonyms
    incremental(broker.bootstrap, ResourceType.BROKER, "0", set_op("defaults.segment.ms", "5000"))
    described = describe(broker.bootstrap, ResourceType.TOPIC, topic_name)["segment.ms"]
    assert (described.value, described.source) == (
        "5000",
        ConfigSource.DYNAMIC_BROKER_CONFIG.value,
    )
    (own,) = [c for c in wire_describe(broker, "0") if c.name == "defaults.segment.ms"]
    assert [(s.value, s.source) for s in own.synonyms] == [
        ("5000", ConfigSource.DYNAMIC_BROKER_CONFIG.value),
        ("60000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value),
        ("604800000", ConfigSource.DEFAULT_CONFIG.value),
    ]


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("data_dir", "/tmp/elsewhere", "read-only"),
        ("kafka.listen", "127.0.0.1:1", "read-only"),
        ("no.such.key", "1", "unknown broker config"),
        ("log.retention.ms", "1000", "defaults.retention.ms"),
        ("default_partitions", "0", "default_partitions"),
        ("defaults.retention.ms", "soon", "defaults.retention.ms"),
        ("defaults.compression.type", "LZ4", "compression.type"),
    ],
)
def test_refused_broker_changes_name_the_key(
    broker: BrokerProcess, key: str, value: str, words: str
) -> None:
    with pytest.raises(KafkaException) as err:
        incremental(broker.bootstrap, ResourceType.BROKER, "0", set_op(key, value))
    assert err.value.args[0].code() == INVALID_CONFIG
    assert words in err.value.args[0].str()


def test_legacy_alter_configs_replaces_the_broker_set(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    broker = broker_factory()
    incremental(broker.bootstrap, ResourceType.BROKER, "0", set_op("default_partitions", "4"))
    resource = ConfigResource(
        ResourceType.BROKER, "0", set_config={"tiering.upload_interval_ms": "2000"}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = ops.admin(broker.bootstrap)
        client.alter_configs([resource], request_timeout=15)[resource].result(20)
    configs = describe(broker.bootstrap, ResourceType.BROKER, "0")
    assert configs["tiering.upload_interval_ms"].value == "2000"
    assert configs["default_partitions"].source == ConfigSource.DEFAULT_CONFIG.value


def test_a_default_that_conflicts_with_a_topic_override_is_refused(
    broker_factory: Callable[..., BrokerProcess], topic_name: str
) -> None:
    broker = broker_factory()
    ops.create_topic(
        broker.bootstrap,
        topic_name,
        1,
        {"remote.storage.enable": "true", "local.retention.ms": "7200000"},
    )
    with pytest.raises(KafkaException) as err:
        incremental(
            broker.bootstrap, ResourceType.BROKER, "0", set_op("defaults.retention.ms", "3600000")
        )
    assert err.value.args[0].code() == INVALID_CONFIG
    assert topic_name in err.value.args[0].str()
    assert describe(broker.bootstrap, ResourceType.TOPIC, topic_name)["retention.ms"].value == (
        "604800000"
    )


def test_cli_config_set_succeeds_and_refuses_read_only(broker: BrokerProcess) -> None:
    done = cli(broker, "cluster", "config", "set", "log.level", "INFO")
    assert done.returncode == 0, done.stderr
    got = cli(broker, "cluster", "config", "get", "log.level", "--format", "json")
    assert got.returncode == 0, got.stderr
    (row,) = json.loads(got.stdout)
    assert (row["value"], row["source"], row["read_only"]) == (
        "INFO",
        "DYNAMIC_BROKER_CONFIG",
        False,
    )
    refused = cli(broker, "cluster", "config", "set", "node_id", "3")
    assert refused.returncode != 0 and "read-only" in refused.stderr
    cli(broker, "cluster", "config", "set", "log.level", "")


def test_describe_configs_documents_types_and_synonyms_on_the_wire(broker: BrokerProcess) -> None:
    request = DescribeConfigsRequest(
        resources=(
            DescribeConfigsResource(
                resource_type=i8(4),
                resource_name="0",
                configuration_keys=("defaults.cleanup.policy", "tiering.upload_interval_ms"),
            ),
        ),
        include_synonyms=True,
        include_documentation=True,
    )
    with Wire(broker.address) as wire:
        (result,) = wire.call(request).results
    configs = {c.name: c for c in result.configs}
    policy = configs["defaults.cleanup.policy"]
    assert (policy.value, policy.config_type, policy.read_only) == ("delete", 7, False)
    assert policy.documentation and "delete" in policy.documentation
    assert [(s.name, s.source) for s in policy.synonyms] == [("defaults.cleanup.policy", 5)]
    interval = configs["tiering.upload_interval_ms"]
    assert interval.config_type == 3 and interval.synonyms[0].source in (4, 5)


def test_log_level_applies_at_once(broker_factory: Callable[..., BrokerProcess]) -> None:
    broker = broker_factory()
    incremental(broker.bootstrap, ResourceType.BROKER, "0", set_op("log.level", "WARNING"))
    incremental(broker.bootstrap, ResourceType.BROKER, "0", set_op("default_partitions", "2"))
    incremental(broker.bootstrap, ResourceType.BROKER, "0", delete_op("log.level"))
    text = broker.log_text()
    assert "dynamic broker configs changed: log.level" in text, "INFO again after the delete"
    assert "dynamic broker configs changed: default_partitions" not in text, "logged at INFO"
