"""``streamd transaction list|describe`` and the authorization of transactional producers
(TRANSACTIONAL_ID WRITE/DESCRIBE, IDEMPOTENT_WRITE on the cluster) set with ``streamd acl``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from tests.integration.test_cli import ADMIN_PASSWORD, ADMIN_USER, Cli
from tests.support import ops
from tests.support.broker import BrokerProcess
from tests.support.txn import txn_producer, wait_for_state

pytestmark = [pytest.mark.streamd_only]


def test_transaction_list_and_describe(broker, topic_name) -> None:  # noqa: ANN001
    cli = Cli(broker)
    ops.create_topic(broker.bootstrap, topic_name, 2)
    tid = f"{topic_name}-tx"
    p = txn_producer(broker.bootstrap, tid)
    p.begin_transaction()
    p.produce(topic_name, b"v", partition=1)
    assert p.flush(30) == 0

    listed = cli.json("transaction", "list", "--state", "ongoing")["transactions"]
    (mine,) = [t for t in listed if t["transactional_id"] == tid]
    assert mine["state"] == "Ongoing"
    assert mine["partitions"] == [{"topic": topic_name, "partition": 1}]
    assert mine["duration_ms"] >= 0
    text = cli.ok("transaction", "list")
    assert "TRANSACTIONAL-ID" in text and tid in text and f"{topic_name}-1" in text

    p.commit_transaction(30)
    wait_for_state(broker.address, tid, "CompleteCommit")  # the markers follow the answer
    described = cli.json("transaction", "describe", tid)
    assert described["state"] == "CompleteCommit" and described["producer_epoch"] == 0
    assert "CompleteCommit" in cli.ok("transaction", "describe", tid)
    assert tid not in {t["transactional_id"] for t in
                       cli.json("transaction", "list", "--state", "Ongoing")["transactions"]}
    assert "unknown transactional id" in cli.fails("transaction", "describe", f"{tid}-nope")


def sasl(broker: BrokerProcess, user: str, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": f"{user}-pw",
        **extra,
    }


def init_error(conf: dict[str, Any]) -> int | None:
    p = Producer({**conf, "transaction.timeout.ms": 10000})
    try:
        p.init_transactions(15)
    except KafkaException as exc:
        return int(exc.args[0].code())
    return None


def test_transactional_id_and_idempotent_write_acls(
    broker_factory: Callable[..., BrokerProcess], topic_name: str
) -> None:
    secure = broker_factory(start=False)
    secure.settings.update(
        {
            "kafka.listeners": f"SASL://{secure.bootstrap}",
            "kafka.listener_security_protocols": "SASL:SASL_PLAINTEXT",
            "security.authorization": "true",
            "security.super_users": f"User:{ADMIN_USER}",
            "security.bootstrap_users": f"{ADMIN_USER}:{ADMIN_PASSWORD}:SCRAM-SHA-256",
        }
    )
    secure.start()
    cli = Cli(secure)
    cli.env.update(
        STREAMD_USER=ADMIN_USER, STREAMD_PASSWORD=ADMIN_PASSWORD, STREAMD_MECHANISM="SCRAM-SHA-256"
    )
    for user in ("alice", "bob", "eve"):
        cli.ok("user", "create", user, "--password", f"{user}-pw")
    cli.ok("topic", "create", topic_name)

    def allow(principal: str, op: str, kind: str, name: str | None = None, *more: str) -> None:
        args = ["acl", "create", "--principal", principal, "--operation", op,
                "--resource-type", kind]
        cli.ok(*args, *(["--resource-name", name] if name else []), *more)

    allow("alice", "write", "topic", topic_name)
    allow("bob", "write", "topic", topic_name)
    allow("alice", "write", "transactional-id", "pay-", "--pattern", "prefixed")
    listed = cli.json("acl", "list", "--principal", "alice", "--resource-type", "transactional-id")
    assert [(a["resource_name"], a["operation"]) for a in listed] == [("pay-", "write")]

    # WRITE on the topic is not enough to be transactional: the transactional id needs WRITE.
    assert init_error(sasl(secure, "bob", **{"transactional.id": "pay-1"})) == (
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    )
    assert init_error(sasl(secure, "alice", **{"transactional.id": "other-1"})) == (
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    )
    p = Producer(sasl(secure, "alice", **{"transactional.id": "pay-1"}))
    p.init_transactions(15)
    p.begin_transaction()
    p.produce(topic_name, b"paid")
    p.commit_transaction(15)
    deadline = time.monotonic() + 30
    while cli.json("transaction", "describe", "pay-1")["state"] != "CompleteCommit":
        assert time.monotonic() < deadline, "the commit did not complete"
        time.sleep(0.1)

    # Idempotence needs IDEMPOTENT_WRITE on the cluster or WRITE on some topic (KIP-679).
    errors: list[KafkaError] = []
    eve = Producer(sasl(secure, "eve", **{"enable.idempotence": True, "message.timeout.ms": 8000}))
    eve.produce(topic_name, b"x", on_delivery=lambda err, _m: errors.append(err))
    eve.flush(15)
    assert errors and errors[0] is not None
    assert errors[0].code() in (
        KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED
    ), errors[0]
    allow("eve", "idempotent-write", "cluster")
    allow("eve", "write", "topic", topic_name)
    ok: list[Any] = []
    eve2 = Producer(sasl(secure, "eve", **{"enable.idempotence": True}))
    eve2.produce(topic_name, b"y", on_delivery=lambda err, _m: ok.append(err))
    eve2.flush(15)
    assert ok == [None]
