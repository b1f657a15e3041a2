"""Real clients configured as old releases, and the SASL v0 flow with ACLs at v0.

kafka-python pinned to ``api_version`` (0, 10, 1), (0, 9) or (0, 8, 2) speaks those brokers'
versions: Produce v2/v1/v0 with message format v1/v0, Fetch v3/v1/v0, OffsetCommit v2/v1/v1,
SaslHandshake v0 with raw SASL tokens, as sarama 1.22, kafka-go 0.2 and Burrow do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.protocol.old import admin as old_admin
from kafka.protocol.old import api_versions, sasl_handshake

from tests.support.broker import BrokerProcess, free_port
from tests.support.ops import create_topic
from tests.support.wire import Wire

NONE, SECURITY_DISABLED = 0, 54


@pytest.mark.parametrize("api_version", [(0, 10, 1), (0, 9), (0, 8, 2)])
def test_kafka_python_as_an_old_release(
    broker: BrokerProcess, topic_name: str, api_version: tuple[int, ...]
) -> None:
    create_topic(broker.bootstrap, topic_name)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=api_version,
                             compression_type="gzip", linger_ms=20)
    for i in range(30):
        producer.send(topic_name, key=b"k", value=b"value-%d" % i)
    producer.flush(20)
    producer.close()
    group = f"old-{topic_name}"
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, api_version=api_version,
                             group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=10000)
    try:
        tp = TopicPartition(topic_name, 0)
        consumer.assign([tp])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 30 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got += [(r.offset, r.value) for r in records]
        assert got == [(i, b"value-%d" % i) for i in range(30)]
        consumer.commit()
        assert consumer.committed(tp) == 30
    finally:
        consumer.close()


@pytest.fixture
def sasl_broker(broker_factory: Any) -> Iterator[BrokerProcess]:
    plain_port = free_port()
    broker = broker_factory(start=False)
    broker.settings.update({
        "kafka.listeners": f"SASL://127.0.0.1:{broker.kafka_port},"
                           f"INTERNAL://127.0.0.1:{plain_port}",
        "kafka.listener_security_protocols": "SASL:SASL_PLAINTEXT,INTERNAL:PLAINTEXT",
        "sasl.mechanisms": "SCRAM-SHA-256,PLAIN",
        "security.authorization": "true",
        "security.super_users": "User:admin",
        "security.bootstrap_users": "admin:admin-secret:SCRAM-SHA-256",
    })
    broker.start()
    yield broker


def _login_v0(wire: Wire, user: str, password: str) -> None:
    answer = wire.call_old(sasl_handshake.SaslHandshakeRequest_v0(mechanism="PLAIN"))
    assert answer["error_code"] == NONE and "PLAIN" in answer["mechanisms"]
    token = f"\0{user}\0{password}".encode()
    wire.send(len(token).to_bytes(4, "big") + token)


def test_sasl_handshake_v0_raw_tokens_then_acls_at_v0(sasl_broker: BrokerProcess) -> None:
    with Wire(sasl_broker.address) as wire:
        _login_v0(wire, "admin", "admin-secret")
        assert wire.read_frame() == b""  # PLAIN's empty server message, as a bare frame
        created = wire.call_old(old_admin.CreateAclsRequest_v0(
            creations=[(2, "audit", "User:reader", "*", 3, 3)]))
        assert created["results"][0]["error_code"] == NONE
        described = wire.call_old(old_admin.DescribeAclsRequest_v0(
            resource_type=2, resource_name="audit", principal=None, host=None,
            operation=1, permission_type=1))
        assert described["error_code"] == NONE
        assert [(r["resource_name"], [a["principal"] for a in r["acls"]])
                for r in described["resources"]] == [("audit", ["User:reader"])]
        removed = wire.call_old(old_admin.DeleteAclsRequest_v0(
            filters=[(2, "audit", None, None, 1, 1)]))
        result = removed["filter_results"][0]
        assert result["error_code"] == NONE
        assert [m["principal"] for m in result["matching_acls"]] == ["User:reader"]


def test_sasl_v0_wrong_password_closes_without_an_answer(sasl_broker: BrokerProcess) -> None:
    with Wire(sasl_broker.address) as wire:
        _login_v0(wire, "admin", "wrong")
        assert wire.closed_by_peer()


def test_sasl_v0_requests_before_the_token_are_not_served(sasl_broker: BrokerProcess) -> None:
    """After a v0 handshake the next frame is the token: a Kafka request there is a bad login."""
    with Wire(sasl_broker.address) as wire:
        assert wire.call_old(
            sasl_handshake.SaslHandshakeRequest_v0(mechanism="PLAIN"))["error_code"] == NONE
        wire.send(wire.request_bytes_old(api_versions.ApiVersionsRequest_v0()))
        assert wire.closed_by_peer()


def test_kafka_python_0_10_scram_over_sasl_v0(sasl_broker: BrokerProcess, topic_name: str
                                              ) -> None:
    producer = KafkaProducer(
        bootstrap_servers=sasl_broker.bootstrap, api_version=(0, 10, 1),
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username="admin", sasl_plain_password="admin-secret",
    )
    try:
        with Wire(sasl_broker.address) as wire:
            _login_v0(wire, "admin", "admin-secret")
            assert wire.read_frame() == b""
            created = wire.call_old(old_admin.CreateTopicsRequest_v0(
                topics=[(topic_name, 1, 1, [], [])], timeout_ms=5000))
            assert created["topics"][0]["error_code"] == NONE
        metadata = producer.send(topic_name, b"over sasl v0").get(timeout=20)
        assert metadata.offset == 0
    finally:
        producer.close()
