"""Authorized operations (KIP-430): Metadata, DescribeCluster and DescribeGroups answer Kafka's
bitfields when asked, through confluent-kafka's AdminClient (librdkafka).

With authorization off every operation Kafka supports on the resource type is allowed; with it
on, exactly the ones the principal's ACLs allow (READ implying DESCRIBE, as in Kafka).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import TopicCollection
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from tests.support import ops
from tests.support.broker import BrokerProcess

TOPIC_OPS = {
    AclOperation.READ,
    AclOperation.WRITE,
    AclOperation.CREATE,
    AclOperation.DESCRIBE,
    AclOperation.DELETE,
    AclOperation.ALTER,
    AclOperation.DESCRIBE_CONFIGS,
    AclOperation.ALTER_CONFIGS,
}
CLUSTER_OPS = {
    AclOperation.CREATE,
    AclOperation.CLUSTER_ACTION,
    AclOperation.DESCRIBE_CONFIGS,
    AclOperation.ALTER_CONFIGS,
    AclOperation.IDEMPOTENT_WRITE,
    AclOperation.ALTER,
    AclOperation.DESCRIBE,
}
GROUP_OPS = {AclOperation.READ, AclOperation.DESCRIBE, AclOperation.DELETE}


def topic_ops(client: AdminClient, topic: str) -> set[AclOperation]:
    futures = client.describe_topics(
        TopicCollection([topic]), include_authorized_operations=True, request_timeout=15
    )
    return set(futures[topic].result(20).authorized_operations or ())


def cluster_ops(client: AdminClient) -> set[AclOperation]:
    cluster = client.describe_cluster(include_authorized_operations=True, request_timeout=15)
    return set(cluster.result(20).authorized_operations or ())


def group_ops(client: AdminClient, group: str) -> set[AclOperation]:
    futures = client.describe_consumer_groups(
        [group], include_authorized_operations=True, request_timeout=15
    )
    return set(futures[group].result(20).authorized_operations or ())


def test_everything_supported_is_allowed_without_authorization(
    broker: BrokerProcess, topic_name: str
) -> None:
    ops.create_topic(broker.bootstrap, topic_name, 1)
    client = ops.admin(broker.bootstrap)
    assert topic_ops(client, topic_name) == TOPIC_OPS
    assert cluster_ops(client) == CLUSTER_OPS
    assert group_ops(client, f"g-{topic_name}") == GROUP_OPS


@pytest.mark.streamd_only
def test_the_principals_acls_decide(
    broker_factory: Callable[..., BrokerProcess], topic_name: str
) -> None:
    secure = broker_factory(start=False)
    secure.settings.update(
        {
            "kafka.listeners": f"SASL://{secure.bootstrap}",
            "kafka.listener_security_protocols": "SASL:SASL_PLAINTEXT",
            "security.authorization": "true",
            "security.super_users": "User:admin",
            "security.bootstrap_users": "admin:admin-pw:SCRAM-SHA-256",
        }
    )
    secure.start()

    def conf(user: str, password: str) -> dict[str, str]:
        return {
            "bootstrap.servers": secure.bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": user,
            "sasl.password": password,
        }

    admin = AdminClient(conf("admin", "admin-pw"))
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096)
    upsert = UserScramCredentialUpsertion("reader", info, b"reader-pw")
    for future in admin.alter_user_scram_credentials([upsert], request_timeout=15).values():
        future.result(20)
    admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(20)
    acls = [
        AclBinding(
            ResourceType.TOPIC, topic_name, ResourcePatternType.LITERAL, "User:reader", "*",
            AclOperation.READ, AclPermissionType.ALLOW,
        ),
        AclBinding(
            ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL, "User:reader", "*",
            AclOperation.DESCRIBE, AclPermissionType.ALLOW,
        ),
    ]  # fmt: skip
    for future in admin.create_acls(acls, request_timeout=15).values():
        future.result(20)

    assert topic_ops(admin, topic_name) == TOPIC_OPS
    assert cluster_ops(admin) == CLUSTER_OPS
    reader = AdminClient(conf("reader", "reader-pw"))
    assert topic_ops(reader, topic_name) == {AclOperation.READ, AclOperation.DESCRIBE}
    assert cluster_ops(reader) == {AclOperation.DESCRIBE}
