"""SASL, TLS and ACLs end to end with confluent-kafka and kafka-python.

One broker (module scope) with three listeners: SASL_PLAINTEXT (the harness's port), SASL_SSL
(a CA and server certificate generated here) and an internal PLAINTEXT one advertised under
another name. Authorization is on and ``User:admin`` is the super user, bootstrapped from config;
every other user is created through AlterUserScramCredentials by the admin.
"""

from __future__ import annotations

import contextlib
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
    "cleaner": ("cleaner-pw", "SCRAM-SHA-256"),
}
RUN = uuid.uuid4().hex[:6]
TOPIC = f"sec-orders-{RUN}"
PAY = f"pay-ments-{RUN}"
GROUP = f"sec-group-{RUN}"
CLEANED = f"sec-cleaned-{RUN}"


def _certificates(
    directory: Path, clients: dict[str, list[tuple[str, str]]] | None = None
) -> dict[str, str]:
    """A CA, a server certificate for localhost and, for each ``clients`` label, a client
    certificate whose subject has those ``(CN|O, value)`` attributes in that (DER) order:
    ``client-LABEL`` (cert) and ``client-LABEL-key``."""
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
    oids = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME}
    for label, attributes in (clients or {}).items():
        client_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(oids[k], v) for k, v in attributes])
        client = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(client_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        paths[f"client-{label}"] = directory / f"client-{label}.pem"
        paths[f"client-{label}-key"] = directory / f"client-{label}.key"
        paths[f"client-{label}"].write_bytes(client.public_bytes(serialization.Encoding.PEM))
        paths[f"client-{label}-key"].write_bytes(
            client_key.private_bytes(
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
        acl(CLEANED, "User:cleaner", AclOperation.DELETE, rtype=ResourceType.GROUP),
        acl(CLEANED, "User:cleaner", AclOperation.READ, rtype=ResourceType.GROUP),
        acl(PAY, "User:cleaner", AclOperation.READ),
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


# ---- issue 13: one SASL exchange at a time, bounded pre-auth frames, re-authentication ----------


def _answers(w: Wire, request_types: list[type]) -> list[Any]:
    """Read the answers to pipelined requests, in order, until the peer closes."""
    from kio.serial import entity_reader

    from tests.support.wire import PeerClosed, response_type

    out: list[Any] = []
    for request_type in request_types:
        try:
            payload = w.read_frame()
        except (PeerClosed, ConnectionResetError):
            break
        response = response_type(request_type)
        header, size = entity_reader(response.__header_schema__)(payload, 0)
        body, _ = entity_reader(response)(payload, size)
        out.append(body)
    return out


def _sasl_auth(w: Wire, token: bytes) -> bytes:
    return w.request_bytes(SaslAuthenticateRequest(auth_bytes=token))


def _metadata_request() -> MetadataRequest:
    return MetadataRequest(
        topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False
    )


def test_pipelined_login_serves_later_requests_as_that_user(prepared: Secure) -> None:
    """Kafka mutes a channel while a request is in flight: a client may write its login and
    its first request together, and the request is served as the user who just logged in."""
    with Wire(prepared.broker.address) as w:
        w.send(
            w.request_bytes(SaslHandshakeRequest(mechanism="PLAIN"))
            + _sasl_auth(w, b"\0reader\0reader-pw")
            + w.request_bytes(_metadata_request())
        )
        hs, auth, meta = _answers(w, [SaslHandshakeRequest, SaslAuthenticateRequest,
                                      MetadataRequest])
    assert hs.error_code == 0 and auth.error_code == 0
    names = {t.name for t in meta.topics}
    assert TOPIC in names  # reader has READ (so DESCRIBE) on it...
    assert PAY not in names  # ...and nothing on this one: it is reader, not someone else


def test_pipelined_scram_first_messages_cannot_switch_user(prepared: Secure) -> None:
    """Two client-first messages written together (reader's, then admin's), then an admin-only
    request: the second client-first fails the exchange, the connection closes after that
    answer, and nothing after it is ever evaluated; no principal is ever established."""
    from kio.schema.describe_acls.v3.request import DescribeAclsRequest

    from streamd.security.scram import SHA256
    from tests.unit.security.scram_client import ScramClient

    acls = DescribeAclsRequest(
        resource_type_filter=1, resource_name_filter=None, pattern_type_filter=1,
        principal_filter=None, host_filter=None, operation=1, permission_type=1,
    )
    for attempt in range(10):
        reader = ScramClient(SHA256, "reader", "reader-pw", f"r{attempt}x")
        intruder = ScramClient(SHA256, "admin", "guess", f"a{attempt}y")
        with Wire(prepared.broker.address) as w:
            w.send(
                w.request_bytes(SaslHandshakeRequest(mechanism="SCRAM-SHA-256"))
                + _sasl_auth(w, reader.first())
                + _sasl_auth(w, intruder.first())
                + w.request_bytes(acls)
            )
            answers = _answers(w, [SaslHandshakeRequest, SaslAuthenticateRequest,
                                   SaslAuthenticateRequest, DescribeAclsRequest])
            assert [a.error_code for a in answers] == [0, 0, 58], answers
            server_first = bytes(answers[1].auth_bytes)
            assert server_first.startswith(b"r=" + reader.nonce.encode())
            # What an attacker would send next (reader's proof) finds the connection closed.
            with contextlib.suppress(OSError):
                w.send(_sasl_auth(w, reader.final(server_first)) + w.request_bytes(acls))
            assert w.closed_by_peer()


def test_twenty_guesses_in_one_write_get_one_answer(prepared: Secure) -> None:
    guesses = [f"\0writer\0guess-{i}".encode() for i in range(20)]
    guesses[9] = b"\0writer\0writer-pw"  # a right guess among them must not count
    with Wire(prepared.broker.address) as w:
        w.send(
            w.request_bytes(SaslHandshakeRequest(mechanism="PLAIN"))
            + b"".join(_sasl_auth(w, g) for g in guesses)
            + w.request_bytes(_metadata_request())
        )
        answers = _answers(w, [SaslHandshakeRequest] + [SaslAuthenticateRequest] * 20)
    assert [a.error_code for a in answers] == [0, 58]


def test_unauthenticated_frames_are_small(secure: Secure) -> None:
    """Before authentication a frame may be a few KiB (sasl.max_receive_bytes), not the
    100 MiB of socket.request.max.bytes: announcing 100 KB closes the connection at once."""
    with Wire(secure.broker.address) as w:
        w.send((100_000).to_bytes(4, "big") + b"\0" * 1000)
        assert w.closed_by_peer(timeout=10)


def _fetch(topic: str, partition: int = 0) -> Any:
    from datetime import timedelta

    from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic

    return FetchRequest(
        replica_id=-1, max_wait=timedelta(milliseconds=10), min_bytes=0, max_bytes=1 << 20,
        isolation_level=0, session_id=0, session_epoch=-1,
        topics=(FetchTopic(topic=topic, partitions=(
            FetchPartition(partition=partition, fetch_offset=0, partition_max_bytes=1 << 20),)),),
        forgotten_topics_data=(), rack_id="",
    )


def test_fetch_needs_read_on_the_topic(prepared: Secure) -> None:
    """writer may WRITE (and so DESCRIBE) the topic, not READ it."""
    assert _produce(prepared.conf("writer"), TOPIC) is None
    for user, expected in (("writer", 29), ("reader", 0)):
        with Wire(prepared.broker.address) as w:
            _authenticate(w, user)
            [part] = w.call(_fetch(TOPIC)).responses[0].partitions
        assert part.error_code == expected, user
        assert bool(part.records) == (expected == 0)
    c = Consumer({**prepared.conf("writer"), "group.id": f"no-read-{RUN}",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(TOPIC, 0, 0)])
        deadline = time.monotonic() + 15
        codes: set[int] = set()  # librdkafka also reports its group lookup being refused
        while KafkaError.TOPIC_AUTHORIZATION_FAILED not in codes and time.monotonic() < deadline:
            msg = c.poll(0.5)
            assert msg is None or msg.error() is not None, "writer read a record"
            if msg is not None:
                codes.add(msg.error().code())
    finally:
        c.close()
    assert KafkaError.TOPIC_AUTHORIZATION_FAILED in codes, codes


def test_offset_delete_needs_read_on_the_topic(prepared: Secure) -> None:
    """cleaner may DELETE (and READ) the group and READ PAY, but not READ TOPIC."""
    from kio.schema.offset_delete.v0.request import (
        OffsetDeleteRequest,
        OffsetDeleteRequestPartition,
        OffsetDeleteRequestTopic,
    )

    committer = Consumer({**prepared.conf("admin"), "group.id": CLEANED,
                          "enable.auto.commit": False})
    try:
        committer.commit(offsets=[TopicPartition(TOPIC, 0, 1), TopicPartition(PAY, 0, 1)],
                         asynchronous=False)
    finally:
        committer.close()
    request = OffsetDeleteRequest(group_id=CLEANED, topics=tuple(
        OffsetDeleteRequestTopic(name=t, partitions=(OffsetDeleteRequestPartition(
            partition_index=0),)) for t in (TOPIC, PAY)))
    with Wire(prepared.broker.address) as w:
        _authenticate(w, "cleaner")
        answer = w.call(request)
    assert answer.error_code == 0
    codes = {t.name: t.partitions[0].error_code for t in answer.topics}
    assert codes == {TOPIC: 29, PAY: 0}
    left = Consumer({**prepared.conf("admin"), "group.id": CLEANED})
    try:
        committed = left.committed([TopicPartition(TOPIC, 0), TopicPartition(PAY, 0)], 15)
    finally:
        left.close()
    assert [tp.offset for tp in committed] == [1, -1001]  # TOPIC's offset was kept


def test_refused_user_listing_is_a_clean_error(prepared: Secure, tmp_path: Path) -> None:
    """librdkafka needs the error message Kafka sets; `streamd user list` as a non-admin must
    end with a one-line error, not an abort."""
    import subprocess
    import sys

    env = {
        "STREAMD_BROKERS": prepared.broker.bootstrap,
        "STREAMD_USER": "reader",
        "STREAMD_PASSWORD": "reader-pw",
        "PATH": "/usr/bin:/bin",
    }
    for args in (["user", "list"], ["user", "list", "--format", "json"]):
        done = subprocess.run(
            [sys.executable, "-m", "streamd", *args], env=env, capture_output=True,
            text=True, timeout=60, cwd=tmp_path,
        )
        assert done.returncode == 1, (done.returncode, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "authoriz" in lines[0].lower(), done.stderr
    script = (
        "import sys\n"
        "from confluent_kafka.admin import AdminClient\n"
        "from confluent_kafka import KafkaException\n"
        f"a = AdminClient({prepared.conf('reader')!r})\n"
        "for users in (None, ['writer', 'reader']):\n"
        "    try:\n"
        "        f = a.describe_user_scram_credentials(users)\n"
        "        [x.result(20) for x in f.values()] if isinstance(f, dict) else f.result(20)\n"
        "    except KafkaException as exc:\n"
        "        print(exc.args[0].code(), exc.args[0].str())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("31 ") for line in lines), done.stdout


def test_audit_log_records_logins_denials_and_changes(prepared: Secure) -> None:
    import json

    assert _produce(prepared.conf("reader"), TOPIC) is not None  # may DESCRIBE, not WRITE
    with Wire(prepared.broker.address) as w:
        assert w.call(SaslHandshakeRequest(mechanism="PLAIN")).error_code == 0
        assert w.call(SaslAuthenticateRequest(auth_bytes=b"\0writer\0nope")).error_code == 58
    admin = AdminClient(prepared.conf("admin"))
    binding = AclBinding(ResourceType.TOPIC, f"audit-{RUN}", ResourcePatternType.LITERAL,
                         "User:reader", "*", AclOperation.READ, AclPermissionType.ALLOW)
    for f in admin.create_acls([binding]).values():
        f.result(20)
    upsert = UserScramCredentialUpsertion(
        f"audited-{RUN}", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), b"pw"
    )
    for f in admin.alter_user_scram_credentials([upsert]).values():
        f.result(20)

    def entries() -> list[dict[str, Any]]:
        out = []
        for line in prepared.broker.log_text().splitlines():
            if " streamd.audit: " in line:
                out.append(json.loads(line.split(" streamd.audit: ", 1)[1]))
        return out

    deadline = time.monotonic() + 10
    wanted = {
        "denied write": lambda e: e["event"] == "authorization" and e["result"] == "denied"
        and e["principal"] == "User:reader" and e["operation"] == "WRITE"
        and e["resource"] == f"TOPIC:{TOPIC}" and e["host"] == "127.0.0.1",
        "failed login": lambda e: e["event"] == "authentication" and e["result"] == "failure"
        and e["operation"] == "SASL PLAIN",
        "login": lambda e: e["event"] == "authentication" and e["result"] == "success"
        and e["principal"] == "User:admin",
        "acl": lambda e: e["event"] == "acl" and e["result"] == "applied"
        and e["principal"] == "User:admin" and f"audit-{RUN}" in e["binding"],
        "user": lambda e: e["event"] == "user" and e["resource"] == f"USER:audited-{RUN}"
        and e["result"] == "applied" and e["mechanism"] == "SCRAM-SHA-256",
    }
    missing = set(wanted)
    while missing and time.monotonic() < deadline:
        found = entries()
        missing = {k for k in missing if not any(wanted[k](e) for e in found)}
        if missing:
            time.sleep(0.2)
    assert not missing, missing
    for entry in entries():
        assert set(entry) >= {"event", "principal", "host", "resource", "operation", "result"}
    assert "pw" not in [str(v) for e in entries() for v in e.values()]


def test_certificate_principals_are_rfc2253_escaped(
    broker_factory: Any, tmp_path: Path
) -> None:
    """A client certificate whose single attribute is O="acme,CN=admin" is not the certificate
    CN=admin,O=acme that the ACLs name: Kafka writes it O=acme\\,CN\\=admin."""
    certs = _certificates(
        tmp_path,
        {"real": [("CN", "admin"), ("O", "acme")], "forged": [("O", "acme,CN=admin")]},
    )
    broker = broker_factory(start=False)
    sasl_port = free_port()
    topic = f"mtls-{RUN}"
    broker.settings.update(
        {
            "kafka.listeners": f"MTLS://127.0.0.1:{broker.kafka_port},"
            f"SASL://127.0.0.1:{sasl_port}",
            "kafka.listener_security_protocols": "MTLS:SSL,SASL:SASL_PLAINTEXT",
            "tls.cert_file": certs["cert"],
            "tls.key_file": certs["key"],
            "tls.ca_file": certs["ca"],
            "tls.client_auth": "required",
            "sasl.mechanisms": "SCRAM-SHA-256",
            "security.authorization": "true",
            "security.super_users": "User:admin",
            "security.bootstrap_users": "admin:admin-secret:SCRAM-SHA-256",
        }
    )
    broker.start()
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{sasl_port}",
                         "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
                         "sasl.username": "admin", "sasl.password": "admin-secret"})
    grants = {topic: "User:O=acme,CN=admin", f"{topic}-f": "User:O=acme\\,CN\\=admin"}
    for f in admin.create_topics([NewTopic(t, 1, 1) for t in grants]).values():
        f.result(20)
    bindings = [
        AclBinding(ResourceType.TOPIC, t, ResourcePatternType.LITERAL, principal, "*",
                   AclOperation.ALL, AclPermissionType.ALLOW)
        for t, principal in grants.items()
    ]
    for f in admin.create_acls(bindings).values():
        f.result(20)

    def visible(label: str) -> set[str]:
        client = AdminClient({
            "bootstrap.servers": f"127.0.0.1:{broker.kafka_port}",
            "security.protocol": "SSL",
            "ssl.ca.location": certs["ca"],
            "ssl.certificate.location": certs[f"client-{label}"],
            "ssl.key.location": certs[f"client-{label}-key"],
        })
        return set(client.list_topics(timeout=15).topics) & set(grants)

    assert visible("real") == {topic}
    assert visible("forged") == {f"{topic}-f"}


def test_reauthentication_ends_sessions_of_deleted_users(broker_factory: Any) -> None:
    """KIP-368: with kafka.connections_max_reauth_ms a login lasts that long. A client that
    re-authenticates keeps its connection; once the user is deleted, the session ends at its
    expiry (the next request closes the connection, as in Kafka)."""
    from datetime import timedelta

    from confluent_kafka.admin import UserScramCredentialDeletion

    broker = broker_factory(start=False)
    broker.settings.update({
        "kafka.listeners": f"SASL://127.0.0.1:{broker.kafka_port}",
        "kafka.listener_security_protocols": "SASL:SASL_PLAINTEXT",
        "sasl.mechanisms": "PLAIN,SCRAM-SHA-256",
        "security.bootstrap_users": "admin:admin-secret:SCRAM-SHA-256,"
        "temp:temp-pw:SCRAM-SHA-256,keeper:keeper-pw:SCRAM-SHA-256",
        "kafka.connections_max_reauth_ms": "2000",
    })
    broker.start()

    def login(w: Wire, user: str, password: str) -> Any:
        assert w.call(SaslHandshakeRequest(mechanism="PLAIN")).error_code == 0
        return w.call(SaslAuthenticateRequest(auth_bytes=f"\0{user}\0{password}".encode()))

    with Wire(broker.address) as doomed, Wire(broker.address) as kept, \
            Wire(broker.address) as swapped:
        assert login(doomed, "temp", "temp-pw").session_lifetime == timedelta(seconds=2)
        logged_in = time.monotonic()
        assert login(kept, "keeper", "keeper-pw").error_code == 0
        assert login(swapped, "keeper", "keeper-pw").error_code == 0
        admin = AdminClient({"bootstrap.servers": broker.bootstrap,
                             "security.protocol": "SASL_PLAINTEXT",
                             "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "admin",
                             "sasl.password": "admin-secret"})
        deletion = UserScramCredentialDeletion("temp", ScramMechanism.SCRAM_SHA_256)
        for f in admin.alter_user_scram_credentials([deletion]).values():
            f.result(20)
        assert _metadata(doomed).brokers  # still within its session
        # Re-authenticating as someone else fails and closes.
        assert login(swapped, "admin", "admin-secret").error_code == 58
        assert swapped.closed_by_peer()
        # The keeper re-authenticates before expiry and goes on past the first expiry.
        renewed = login(kept, "keeper", "keeper-pw")
        assert renewed.error_code == 0 and renewed.session_lifetime == timedelta(seconds=2)
        closed_after = None
        deadline = logged_in + 15
        while closed_after is None and time.monotonic() < deadline:
            try:
                _metadata(doomed)
            except (ConnectionError, OSError):
                closed_after = time.monotonic() - logged_in
            time.sleep(0.1)
        assert closed_after is not None and closed_after >= 2.0, closed_after
        assert _metadata(kept).brokers
        # The deleted user cannot log in again either.
        with Wire(broker.address) as again:
            assert login(again, "temp", "temp-pw").error_code == 58


def test_confluent_client_reauthenticates(broker_factory: Any) -> None:
    """librdkafka re-authenticates (KIP-368) within the session lifetime: a producer keeps
    producing across several lifetimes without errors."""
    broker = broker_factory(start=False)
    broker.settings.update({
        "kafka.listeners": f"SASL://127.0.0.1:{broker.kafka_port}",
        "kafka.listener_security_protocols": "SASL:SASL_PLAINTEXT",
        "security.bootstrap_users": "admin:admin-secret:SCRAM-SHA-256",
        "kafka.connections_max_reauth_ms": "1000",
    })
    broker.start()
    conf = {"bootstrap.servers": broker.bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "admin",
            "sasl.password": "admin-secret"}
    topic = f"reauth-{RUN}"
    admin = AdminClient(conf)
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result(20)
    errors: list[Any] = []
    delivered: list[int] = []
    p = Producer({**conf, "error_cb": errors.append, "linger.ms": 0})
    started = time.monotonic()
    while time.monotonic() - started < 3.5:
        p.produce(topic, b"x", on_delivery=lambda err, msg: (errors.append(err) if err
                                                             else delivered.append(1)))
        p.poll(0.1)
    assert p.flush(15) == 0
    assert not errors, errors
    assert len(delivered) >= 20
    assert "SASL session expired" not in broker.log_text()
