"""SaslSession and SASL/PLAIN, without sockets."""

from __future__ import annotations

import pytest

from streamd.errors import ErrorCode
from streamd.security.sasl import ANONYMOUS, IllegalSaslState, SaslSession, principal_from_cert
from streamd.security.scram import SHA256, SHA512, AuthenticationFailed, ScramCredential
from tests.unit.security.scram_client import ScramClient

CREDS = {
    ("alice", SHA256.name): ScramCredential.from_password(SHA256, "wonderland"),
    ("bob", SHA512.name): ScramCredential.from_password(SHA512, "builder"),
}
MECHS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def session(protocol: str = "SASL_PLAINTEXT") -> SaslSession:
    return SaslSession(protocol, MECHS, lambda u, m: CREDS.get((u, m)))


def test_plaintext_listener_is_anonymous_and_authenticated() -> None:
    s = session("PLAINTEXT")
    assert s.authenticated and s.principal == ANONYMOUS
    assert s.handshake("PLAIN") == ErrorCode.ILLEGAL_SASL_STATE


@pytest.mark.parametrize(("user", "password"), [("alice", "wonderland"), ("bob", "builder")])
def test_plain_login_checks_scram_credentials(user: str, password: str) -> None:
    s = session()
    assert not s.authenticated
    assert s.handshake("PLAIN") == ErrorCode.NONE
    assert s.authenticate(f"\0{user}\0{password}".encode()) == b""
    assert s.authenticated and s.principal == f"User:{user}"


@pytest.mark.parametrize(
    "token", [b"\0alice\0wrong", b"\0nobody\0wonderland", b"alice", b"bob\0alice\0wonderland"]
)
def test_plain_failures(token: bytes) -> None:
    s = session()
    s.handshake("PLAIN")
    with pytest.raises(AuthenticationFailed):
        s.authenticate(token)
    assert s.failed and not s.authenticated


def test_scram_login_through_session() -> None:
    s = session("SASL_SSL")
    assert s.handshake("SCRAM-SHA-256") == ErrorCode.NONE
    client = ScramClient(SHA256, "alice", "wonderland", "nonce123")
    server_first = s.authenticate(client.first())
    assert not s.authenticated
    assert s.authenticate(client.final(server_first)) == client.expected_server_final
    assert s.principal == "User:alice"


def test_state_errors() -> None:
    s = session()
    assert s.handshake("GSSAPI") == ErrorCode.UNSUPPORTED_SASL_MECHANISM
    with pytest.raises(IllegalSaslState):
        s.authenticate(b"\0alice\0wonderland")
    s = session()
    s.handshake("PLAIN")
    assert s.handshake("PLAIN") == ErrorCode.ILLEGAL_SASL_STATE


def test_disabled_mechanism_refused() -> None:
    s = SaslSession("SASL_PLAINTEXT", ("SCRAM-SHA-512",), lambda u, m: None)
    assert s.handshake("PLAIN") == ErrorCode.UNSUPPORTED_SASL_MECHANISM


def test_principal_from_certificate() -> None:
    cert = {"subject": ((("countryName", "DE"),), (("organizationName", "Acme"),),
                        (("commonName", "client1"),))}
    assert principal_from_cert(cert) == "User:CN=client1,O=Acme,C=DE"
    assert principal_from_cert(None) is None
