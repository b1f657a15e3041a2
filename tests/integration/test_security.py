"""SASL, TLS and ACLs end to end with confluent-kafka and kafka-python.

One broker (module scope) with three listeners: SASL_PLAINTEXT (the harness's port), SASL_SSL
(a CA and server certificate generated here) and an internal PLAINTEXT one advertised under
another name. Authorization is on and ``User:admin`` is the super user, bootstrapped from config;
every other user is created through AlterUserScramCredentials by the admin.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
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
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

from tests.support.broker import BrokerProcess, free_port
from tests.support.wire import Wire

pytestmark = [pytest.mark.streamd_only]

USERS = {
    "admin": ("admin-secret", "SCRAM-SHA-256"),
    "writer": ("writer-pw", "SCRAM-SHA-512"),
    "reader": ("reader-pw", "SCRAM-SHA-256"),
    "nobody": ("nobody-pw", "SCRAM-SHA-256"),
    "payer": ("payer-pw", "SCRAM-SHA-256"),
    "denied": ("denied-pw", "SCRAM-SHA-256"),
}
RUN = uuid.uuid4().hex[:6]
TOPIC = f"sec-orders-{RUN}"
PAY = f"pay-ments-{RUN}"
GROUP = f"sec-group-{RUN}"


def _certificates(directory: Path) -> dict[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("streamd test CA"))
        .issuer_name(name("streamd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem",
             "key": directory / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {k: str(v) for k, v in paths.items()}


class Secure:
    """The running broker and how to reach each listener."""

    def __init__(self, broker: BrokerProcess, ssl_port: int, plain_port: int, ca: str) -> None:
        self.broker = broker
        self.ssl_port = ssl_port
        self.plain_port = plain_port
        self.ca = ca

    def conf(self, user: str, protocol: str = "SASL_PLAINTEXT", **extra: Any) -> dict[str, Any]:
        password, mechanism = USERS.get(user, ("?", "SCRAM-SHA-256"))
        port = self.broker.kafka_port if protocol == "SASL_PLAINTEXT" else self.ssl_port
        conf: dict[str, Any] = {
            "bootstrap.servers": f"127.0.0.1:{port}",
            "security.protocol": protocol,
            "sasl.mechanism": mechanism,
            "sasl.username": user,
            "sasl.password": password,
        }
        if protocol == "SASL_SSL":
            conf["ssl.ca.location"] = self.ca
        conf.update(extra)
        return conf

    def kafka_python(self, user: str, protocol: str, password: str | None = None) -> dict[str, Any]:
        pw, mechanism = USERS[user]
        port = self.broker.kafka_port if protocol == "SASL_PLAINTEXT" else self.ssl_port
        conf: dict[str, Any] = {
            "bootstrap_servers": f"127.0.0.1:{port}",
            "security_protocol": protocol,
            "sasl_mechanism": mechanism,
            "sasl_plain_username": user,
            "sasl_plain_password": pw if password is None else password,
            "request_timeout_ms": 10000,
        }
        if protocol == "SASL_SSL":
            conf["ssl_cafile"] = self.ca
        return conf


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    base = tmp_path_factory.mktemp("secure-broker")
    certs = _certificates(base)
    broker = BrokerProcess(base / "data", log_path=base / "broker.log")
    ssl_port, plain_port = free_port(), free_port()
    broker.settings.update(
        {
            "kafka.listeners": f"SASL://127.0.0.1:{broker.kafka_port},"
            f"SECURE://127.0.0.1:{ssl_port},INTERNAL://127.0.0.1:{plain_port}",
            "kafka.listener_security_protocols": "SASL:SASL_PLAINTEXT,SECURE:SASL_SSL,"
            "INTERNAL:PLAINTEXT",
            "kafka.advertised_listeners": f"INTERNAL://internal.invalid:{plain_port}",
            "tls.cert_file": certs["cert"],
            "tls.key_file": certs["key"],
            "sasl.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
            "security.authorization": "true",
            "security.super_users": "User:admin",
            "auto_create_topics": "false",
            "security.bootstrap_users": "admin:{}:{}".format(*USERS["admin"]),
        }
    )
    broker.start()
    try:
        secure = Secure(broker, ssl_port, plain_port, certs["ca"])
        admin = AdminClient(secure.conf("admin"))
        upserts = [
            UserScramCredentialUpsertion(
                user,
                ScramCredentialInfo(getattr(ScramMechanism, mech.replace("-", "_")), 4096),
                password.encode(),
            )
            for user, (password, mech) in USERS.items()
            if user != "admin"
        ]
        for f in admin.alter_user_scram_credentials(upserts).values():
            f.result(20)
        yield secure
    finally:
        broker.close()


@pytest.fixture(scope="module")
def prepared(secure: Secure) -> Secure:
    """Topics and ACLs, created by the super user through the Kafka admin API."""
    admin = AdminClient(secure.conf("admin"))
    futures = admin.create_topics([NewTopic(t, 1, 1) for t in (TOPIC, PAY, "pa")])
    for f in futures.values():
        f.result(20)

    def acl(name: str, principal: str, op: AclOperation, *, pattern=ResourcePatternType.LITERAL,
            rtype=ResourceType.TOPIC, perm=AclPermissionType.ALLOW) -> AclBinding:
        return AclBinding(rtype, name, pattern, principal, "*", op, perm)

    bindings = [
        acl(TOPIC, "User:writer", AclOperation.WRITE),
        acl(TOPIC, "User:reader", AclOperation.READ),
        acl("pay-", "User:payer", AclOperation.WRITE, pattern=ResourcePatternType.PREFIXED),
        acl(TOPIC, "User:denied", AclOperation.WRITE),
        acl(TOPIC, "User:denied", AclOperation.WRITE, perm=AclPermissionType.DENY),
    ]
    for f in admin.create_acls(bindings).values():
        f.result(20)
    return secure


def _produce(conf: dict[str, Any], topic: str) -> KafkaError | None:
    errors: list[KafkaError | None] = []
    p = Producer({**conf, "message.timeout.ms": 8000, "retries": 0})
    p.produce(topic, b"value", on_delivery=lambda err, msg: errors.append(err))
    p.flush(15)
    assert errors, "no delivery report"
    return errors[0]


def _kp_produce(conf: dict[str, Any], topic: str) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(**conf, max_block_ms=8000, retries=0)
    try:
        producer.send(topic, b"value").get(timeout=10)
    finally:
        producer.close(timeout=5)


PROTOCOLS = ["SASL_PLAINTEXT", "SASL_SSL"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_confluent_write_acl(prepared: Secure, protocol: str) -> None:
    assert _produce(prepared.conf("writer", protocol), TOPIC) is None
    err = _produce(prepared.conf("nobody", protocol), TOPIC)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    err = _produce(prepared.conf("reader", protocol), TOPIC)  # DESCRIBE (via READ), no WRITE
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_kafka_python_write_acl(prepared: Secure, protocol: str) -> None:
    from kafka.errors import TopicAuthorizationFailedError

    _kp_produce(prepared.kafka_python("writer", protocol), TOPIC)
    with pytest.raises(TopicAuthorizationFailedError):
        _kp_produce(prepared.kafka_python("nobody", protocol), TOPIC)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_password_fails_authentication(
    secure: Secure, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError as KPError

    seen: list[KafkaError] = []
    conf = secure.conf("writer", protocol, **{"sasl.password": "wrong", "error_cb": seen.append})
    p = Producer(conf)
    started = time.monotonic()
    while not any(e.code() == KafkaError._AUTHENTICATION for e in seen):
        p.poll(0.2)
        assert time.monotonic() - started < 15, seen
    # kafka-python retries the bootstrap until its timeout; each attempt logs the SASL error.
    kp = secure.kafka_python("writer", protocol, password="wrong")
    with caplog.at_level("WARNING", logger="kafka"), pytest.raises(KPError):
        KafkaProducer(**kp, bootstrap_timeout_ms=2000)
    assert "SaslAuthenticationFailedError" in caplog.text or "Authentication failed" in caplog.text


def test_unknown_user_fails_like_a_wrong_password(secure: Secure) -> None:
    seen: list[KafkaError] = []
    conf = secure.conf("ghost", **{"sasl.password": "x", "error_cb": seen.append})
    p = Producer(conf)
    started = time.monotonic()
    while not any(e.code() == KafkaError._AUTHENTICATION for e in seen):
        p.poll(0.2)
        assert time.monotonic() - started < 15, seen


def test_prefixed_acl(prepared: Secure) -> None:
    assert _produce(prepared.conf("payer"), PAY) is None
    err = _produce(prepared.conf("payer"), "pa")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_deny_beats_allow(prepared: Secure) -> None:
    err = _produce(prepared.conf("denied"), TOPIC)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_super_user_can_do_everything(prepared: Secure) -> None:
    conf = prepared.conf("admin", "SASL_SSL")
    assert _produce(conf, PAY) is None
    c = Consumer({**conf, "group.id": f"admin-{RUN}", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(PAY, 0, 0)])
        msg = c.poll(10)
        assert msg is not None and msg.error() is None
        c.commit(message=msg, asynchronous=False)
    finally:
        c.close()
    admin = AdminClient(conf)
    for f in admin.delete_topics(["pa"]).values():
        f.result(20)
    listed = admin.list_topics(timeout=10).topics
    assert TOPIC in listed and PAY in listed


def test_metadata_hides_topics_without_describe(prepared: Secure) -> None:
    topics = AdminClient(prepared.conf("payer")).list_topics(timeout=10).topics
    assert PAY in topics
    assert TOPIC not in topics
    topics = AdminClient(prepared.conf("nobody")).list_topics(timeout=10).topics
    assert not [t for t in topics if t.endswith(RUN)]


def test_group_read_needed(prepared: Secure) -> None:
    c = Consumer(
        {**prepared.conf("reader"), "group.id": GROUP, "auto.offset.reset": "earliest",
         "enable.auto.commit": False}
    )
    try:
        c.subscribe([TOPIC])
        deadline = time.monotonic() + 15
        code = None
        while time.monotonic() < deadline and code is None:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is not None:
                code = msg.error().code()
    finally:
        c.close()
    assert code == KafkaError.GROUP_AUTHORIZATION_FAILED


def _authenticate(w: Wire, user: str) -> None:
    password, _ = USERS[user]
    assert w.call(SaslHandshakeRequest(mechanism="PLAIN")).error_code == 0
    answer = w.call(SaslAuthenticateRequest(auth_bytes=f"\0{user}\0{password}".encode()))
    assert answer.error_code == 0, answer


def _metadata(w: Wire) -> Any:
    return w.call(
        MetadataRequest(
            topics=None,
            allow_auto_topic_creation=False,
            include_topic_authorized_operations=False,
        )
    )


def test_unauthenticated_request_is_rejected(secure: Secure) -> None:
    with Wire(secure.broker.address) as w:
        assert w.call(ApiVersionsRequest(client_software_name="t", client_software_version="1"))
        w.send(w.request_bytes(MetadataRequest(
            topics=None, allow_auto_topic_creation=False,
            include_topic_authorized_operations=False)))
        assert w.closed_by_peer()


def test_failed_login_is_answered_then_closed(secure: Secure) -> None:
    with Wire(secure.broker.address) as w:
        assert w.call(SaslHandshakeRequest(mechanism="PLAIN")).error_code == 0
        started = time.monotonic()
        answer = w.call(SaslAuthenticateRequest(auth_bytes=b"\0writer\0nope"))
        assert answer.error_code == 58  # SASL_AUTHENTICATION_FAILED
        assert time.monotonic() - started >= 0.09  # sasl.failed_authentication_delay_ms
        assert w.closed_by_peer()


def test_each_listener_advertises_itself(prepared: Secure) -> None:
    with Wire(prepared.broker.address) as w:
        _authenticate(w, "admin")
        brokers = [(b.host, b.port) for b in _metadata(w).brokers]
        assert brokers == [("127.0.0.1", prepared.broker.kafka_port)]
    with Wire(("127.0.0.1", prepared.plain_port)) as w:
        meta = _metadata(w)
        assert [(b.host, b.port) for b in meta.brokers] == [
            ("internal.invalid", prepared.plain_port)
        ]
        # The internal listener is anonymous: no ACL for User:ANONYMOUS, so nothing shows.
        assert not [t for t in meta.topics if t.name.endswith(RUN)]


def test_scram_user_management_and_restart(prepared: Secure) -> None:
    admin = AdminClient(prepared.conf("admin"))
    upsert = UserScramCredentialUpsertion(
        "late", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), b"late-password"
    )
    for f in admin.alter_user_scram_credentials([upsert]).values():
        f.result(20)
    described = admin.describe_user_scram_credentials(["late"])["late"].result(20)
    info = described.scram_credential_infos[0]
    assert (info.mechanism, info.iterations) == (ScramMechanism.SCRAM_SHA_512, 8192)
    with pytest.raises(KafkaException):
        AdminClient(prepared.conf("nobody")).describe_user_scram_credentials().result(20)

    stored = (prepared.broker.data_dir / "security" / "credentials.json").read_text()
    for password in [pw for pw, _ in USERS.values()] + ["late-password"]:
        assert password not in stored

    prepared.broker.restart()
    late = {**prepared.conf("admin", "SASL_SSL"), "sasl.username": "late",
            "sasl.password": "late-password", "sasl.mechanism": "SCRAM-SHA-512"}
    AdminClient(late).list_topics(timeout=10)  # authenticates
    acls = admin_acls(AdminClient(prepared.conf("admin")))
    assert ("pay-", "User:payer") in acls
    assert _produce(prepared.conf("writer"), TOPIC) is None
    logged = prepared.broker.log_text()
    for user, (password, _) in USERS.items():
        if user != "admin":  # the admin's is on the harness's echo of the command line
            assert password not in logged


def admin_acls(admin: AdminClient) -> set[tuple[str, str]]:
    flt = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
        AclOperation.ANY, AclPermissionType.ANY,
    )
    return {(b.name, b.principal) for b in admin.describe_acls(flt).result(20)}


def test_acl_apis_refuse_non_admins_and_delete(prepared: Secure) -> None:
    flt = AclBindingFilter(
        ResourceType.TOPIC, None, ResourcePatternType.ANY, "User:denied", None,
        AclOperation.ANY, AclPermissionType.DENY,
    )
    with pytest.raises(KafkaException):
        AdminClient(prepared.conf("writer")).describe_acls(flt).result(20)
    admin = AdminClient(prepared.conf("admin"))
    deleted = admin.delete_acls([flt])[flt].result(20)
    assert [(b.name, b.permission_type) for b in deleted] == [(TOPIC, AclPermissionType.DENY)]
    assert _produce(prepared.conf("denied"), TOPIC) is None


def test_sasl_listener_closes_raw_produce(secure: Secure) -> None:
    with socket.create_connection(secure.broker.address, timeout=5) as s:
        s.sendall(b"\x00\x00\x00\x0c\x00\x00\x00\x09\x00\x00\x00\x01\x00\x00\x00\x00")
        s.settimeout(5)
        assert s.recv(100) == b""
