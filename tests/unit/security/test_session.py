"""SaslSession and SASL/PLAIN, without sockets."""

from __future__ import annotations

import threading

import pytest

from streamd.errors import ErrorCode
from streamd.security.sasl import ANONYMOUS, IllegalSaslState, SaslSession
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
    assert s.failed
    s = session()
    s.handshake("PLAIN")
    assert s.handshake("PLAIN") == ErrorCode.ILLEGAL_SASL_STATE
    assert s.failed  # Kafka closes the connection on an illegal SASL state


def test_disabled_mechanism_refused() -> None:
    s = SaslSession("SASL_PLAINTEXT", ("SCRAM-SHA-512",), lambda u, m: None)
    assert s.handshake("PLAIN") == ErrorCode.UNSUPPORTED_SASL_MECHANISM


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reauth_session(lookup: object = None, reauth_ms: int = 1000) -> tuple[SaslSession, Clock]:
    clock = Clock()
    s = SaslSession(
        "SASL_PLAINTEXT", MECHS, lookup or (lambda u, m: CREDS.get((u, m))),  # type: ignore[arg-type]
        reauth_ms=reauth_ms, clock=clock,
    )
    return s, clock


def login_plain(s: SaslSession, user: str = "alice", password: str = "wonderland") -> None:
    assert s.handshake("PLAIN") == ErrorCode.NONE
    s.authenticate(f"\0{user}\0{password}".encode())


def test_session_lifetime_and_expiry() -> None:
    s, clock = reauth_session()
    login_plain(s)
    assert s.session_lifetime_ms == 1000
    assert not s.expired(clock.now + 0.999)
    assert s.expired(clock.now + 1.0)
    plain = session()
    login_plain(plain)
    assert plain.session_lifetime_ms == 0 and plain.expires_at is None


def test_reauthentication_renews_the_session() -> None:
    s, clock = reauth_session()
    login_plain(s)
    clock.now += 0.9
    assert s.handshake("PLAIN") == ErrorCode.NONE and s.reauthenticating
    assert not s.authenticated  # the connection is gated until the new login completes
    login = b"\0alice\0wonderland"
    s.authenticate(login)
    assert s.authenticated and s.principal == "User:alice" and not s.reauthenticating
    assert s.expires_at == pytest.approx(clock.now + 1.0)


def test_reauthentication_as_someone_else_fails() -> None:
    s, _ = reauth_session()
    login_plain(s)
    assert s.handshake("PLAIN") == ErrorCode.NONE
    with pytest.raises(AuthenticationFailed):
        s.authenticate(b"\0bob\0builder")
    assert s.failed and s.principal == "User:alice"


def test_reauthentication_after_the_password_changed_fails() -> None:
    creds = dict(CREDS)
    s, _ = reauth_session(lambda u, m: creds.get((u, m)))
    login_plain(s)
    creds[("alice", SHA256.name)] = ScramCredential.from_password(SHA256, "new-password")
    assert s.handshake("PLAIN") == ErrorCode.NONE
    with pytest.raises(AuthenticationFailed):
        s.authenticate(b"\0alice\0wonderland")
    assert s.failed


def test_reauthentication_keeps_the_mechanism() -> None:
    s, _ = reauth_session()
    login_plain(s)
    assert s.handshake("SCRAM-SHA-256") == ErrorCode.UNSUPPORTED_SASL_MECHANISM
    assert s.failed


def test_second_handshake_without_reauthentication_is_illegal() -> None:
    s = session()
    login_plain(s)
    assert s.handshake("PLAIN") == ErrorCode.ILLEGAL_SASL_STATE
    assert s.failed


def test_concurrent_steps_fail_the_exchange() -> None:
    """Two SaslAuthenticate steps of one connection running at once (what pipelined frames
    did when each went to its own worker thread): the second is refused and the first, when
    it finishes, finds the session failed; nobody is authenticated."""
    entered, release = threading.Event(), threading.Event()

    def slow_lookup(user: str, mechanism: str) -> ScramCredential | None:
        entered.set()
        assert release.wait(10)
        return CREDS.get((user, mechanism))

    s = SaslSession("SASL_PLAINTEXT", MECHS, slow_lookup)
    assert s.handshake("PLAIN") == ErrorCode.NONE
    outcome: list[object] = []

    def first() -> None:
        try:
            outcome.append(s.authenticate(b"\0alice\0wonderland"))
        except Exception as exc:
            outcome.append(exc)

    worker = threading.Thread(target=first)
    worker.start()
    assert entered.wait(10)
    try:
        with pytest.raises(IllegalSaslState):
            s.authenticate(b"\0bob\0builder")
    finally:
        release.set()
        worker.join(10)
    assert not worker.is_alive()
    assert isinstance(outcome[0], IllegalSaslState)
    assert s.failed and s.principal == ANONYMOUS


def test_scram_second_client_first_cannot_swap_the_user() -> None:
    """The exchange is bound at the first message: a second client-first (naming admin) is
    not a new exchange but a broken final message, so alice's proof never logs in as admin."""
    s = session()
    assert s.handshake("SCRAM-SHA-256") == ErrorCode.NONE
    alice = ScramClient(SHA256, "alice", "wonderland", "n1")
    server_first = s.authenticate(alice.first())
    with pytest.raises(AuthenticationFailed):
        s.authenticate(ScramClient(SHA256, "admin", "x", "n2").first())
    assert s.failed
    with pytest.raises(IllegalSaslState):
        s.authenticate(alice.final(server_first))
    assert not s.authenticated and s.principal == ANONYMOUS
