"""The admin HTTP API on aiohttp: HTTP/1.1 keep-alive, JSON errors, ``admin.require_auth``
(HTTP basic with SCRAM users) and, with authorization on, no topic the caller could not
DESCRIBE over Kafka (issue 13 item 11, issue 18 item 9)."""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from tests.support import admin_http
from tests.support.broker import BrokerProcess

pytestmark = [pytest.mark.streamd_only]

ADMIN = ("admin", "admin-secret")
ALICE = ("alice", "alice-secret")


def test_keep_alive_serves_several_requests_on_one_connection(broker: BrokerProcess) -> None:
    """The hand-written server answered one request per connection and closed it."""
    conn = http.client.HTTPConnection("127.0.0.1", broker.admin_port, timeout=10)
    try:
        for path in ("/v1/health", "/v1/cluster", "/v1/status/ready"):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200, (path, resp.status)
            assert resp.getheader("Content-Type", "").startswith("application/json")
            resp.read()
    finally:
        conn.close()


def test_errors_are_json(broker: BrokerProcess) -> None:
    missing = admin_http.get(broker.admin_port, "/v1/nope")
    assert missing.status == 404
    assert missing.json() == {"error": "no such endpoint /v1/nope"}
    wrong = admin_http.get(broker.admin_port, "/v1/health", method="POST")
    assert wrong.status == 405
    assert wrong.json() == {"error": "POST not allowed on /v1/health"}


def test_health_route_and_readiness(broker: BrokerProcess) -> None:
    health = admin_http.get(broker.admin_port, "/v1/health")
    assert health.status == 200
    assert health.json()["status"] == "ok"
    ready = admin_http.get(broker.admin_port, "/v1/status/ready")
    assert ready.status == 200 and ready.json() == {"status": "ready"}


@pytest.fixture
def secured(broker_factory: Callable[..., BrokerProcess]) -> Iterator[BrokerProcess]:
    """SASL listener, ACLs enforced, admin.require_auth on; admin is a super user."""
    secure = broker_factory(start=False)
    secure.settings.update(
        {
            "kafka.listeners": f"SASL://{secure.bootstrap}",
            "kafka.listener_security_protocols": "SASL:SASL_PLAINTEXT",
            "security.authorization": "true",
            "security.super_users": "User:admin",
            "security.bootstrap_users": (
                f"{ADMIN[0]}:{ADMIN[1]}:SCRAM-SHA-256,{ALICE[0]}:{ALICE[1]}:SCRAM-SHA-512"
            ),
            "admin.require_auth": "true",
        }
    )
    secure.start()
    yield secure


def _sasl(broker: BrokerProcess, user: tuple[str, str], mechanism: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user[0],
        "sasl.password": user[1],
    }


def _setup_topics(broker: BrokerProcess, visible: str, hidden: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(_sasl(broker, ADMIN, "SCRAM-SHA-256"))
    for fut in admin.create_topics([NewTopic(visible, 1), NewTopic(hidden, 1)]).values():
        fut.result(30)
    binding = AclBinding(
        ResourceType.TOPIC, visible, ResourcePatternType.LITERAL, "User:alice", "*",
        AclOperation.DESCRIBE, AclPermissionType.ALLOW,
    )
    for fut in admin.create_acls([binding]).values():
        fut.result(30)
    producer = Producer(_sasl(broker, ADMIN, "SCRAM-SHA-256") | {"acks": "all"})
    for topic in (visible, hidden):
        producer.produce(topic, b"x")
    assert producer.flush(30) == 0


def test_require_auth_uses_scram_users(secured: BrokerProcess) -> None:
    port = secured.admin_port
    anonymous = admin_http.get(port, "/v1/cluster")
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert admin_http.get(port, "/v1/cluster", auth=(ADMIN[0], "wrong")).status == 401
    assert admin_http.get(port, "/v1/cluster", auth=("nobody", "x")).status == 401
    assert admin_http.get(port, "/v1/cluster", headers={"Authorization": "Bearer x"}).status == 401
    assert admin_http.get(port, "/metrics").status == 401
    assert admin_http.get(port, "/console").status == 401
    assert admin_http.get(port, "/v1/cluster", auth=ADMIN).status == 200
    # a SCRAM-SHA-512 user signs in the same way
    assert admin_http.get(port, "/v1/cluster", auth=ALICE).status == 200
    # probes need no credentials and learn nothing else
    assert admin_http.get(port, "/v1/status/ready").json() == {"status": "ready"}
    assert re.search(
        r"streamd\.audit.*event=authentication result=failure principal=User:admin",
        secured.log_text(),
    ), "a failed admin API login is audited"


def test_authorization_hides_topics_the_caller_cannot_describe(
    secured: BrokerProcess, topic_name: str
) -> None:
    visible, hidden = f"open-{topic_name}", f"secret-{topic_name}"
    _setup_topics(secured, visible, hidden)
    port = secured.admin_port

    names = {t["name"] for t in admin_http.get(port, "/v1/topics", auth=ALICE).json()["topics"]}
    assert names == {visible}
    all_names = {t["name"] for t in admin_http.get(port, "/v1/topics", auth=ADMIN).json()["topics"]}
    assert {visible, hidden} <= all_names
    assert admin_http.get(port, "/v1/cluster", auth=ALICE).json()["topics"] == 1

    assert admin_http.get(port, f"/v1/topics/{visible}/storage", auth=ALICE).status == 200
    denied = admin_http.get(port, f"/v1/topics/{hidden}/storage", auth=ALICE)
    unknown = admin_http.get(port, "/v1/topics/no-such-topic/storage", auth=ALICE)
    assert denied.status == unknown.status == 403, "existence must not leak"
    assert admin_http.get(port, "/v1/topics/no-such-topic/storage", auth=ADMIN).status == 404

    metrics = admin_http.get(port, "/metrics", auth=ALICE).text
    assert f'topic="{visible}"' in metrics
    assert hidden not in metrics
    assert hidden in admin_http.get(port, "/metrics", auth=ADMIN).text

    console = admin_http.get(port, "/console/topics", auth=ALICE).text
    assert f'data-topic="{visible}"' in console and hidden not in console
    assert admin_http.get(port, f"/console/topics/{hidden}", auth=ALICE).status == 403
    assert hidden not in admin_http.get(port, "/console", auth=ALICE).text

    # cluster-wide documents need DESCRIBE on the cluster
    assert admin_http.get(port, "/v1/health", auth=ALICE).status == 403
    assert admin_http.get(port, "/v1/health", auth=ADMIN).status == 200


def test_console_reads_messages_as_the_signed_in_user(
    secured: BrokerProcess, topic_name: str
) -> None:
    """The message browser logs in to Kafka with the caller's credentials: ACLs apply as to
    any client (alice may describe the topic but not read it; admin may)."""
    visible, hidden = f"open-{topic_name}", f"secret-{topic_name}"
    _setup_topics(secured, visible, hidden)
    path = f"/console/topics/{visible}/messages?partition=0&format=text"
    as_admin = admin_http.get(secured.admin_port, path, auth=ADMIN)
    assert as_admin.status == 200
    assert 'data-offset="0"' in as_admin.text and "browse-error" not in as_admin.text
    as_alice = admin_http.get(secured.admin_port, path, auth=ALICE)
    assert as_alice.status == 200
    assert 'id=browse-error' in as_alice.text
    assert "authoriz" in as_alice.text.lower()
    assert 'data-offset="0"' not in as_alice.text
