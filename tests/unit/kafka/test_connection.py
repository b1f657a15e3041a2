"""The connection policy without sockets: bytes in, events out (streamd.kafka.connection)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

import streamd.kafka.handlers  # noqa: F401  (registers the APIs)
from streamd.kafka.connection import (
    Close,
    ConnectionLimits,
    ConnectionState,
    Dispatch,
    Write,
)
from streamd.security.sasl import SaslSession
from streamd.security.scram import SHA256, AuthenticationFailed, ScramCredential
from tests.support.wire import encode, frame, request_header

CREDS = {("alice", SHA256.name): ScramCredential.from_password(SHA256, "wonderland")}
LIMITS = ConnectionLimits(
    max_frame_bytes=1 << 20,
    pre_auth_frame_bytes=1024,
    max_inflight_bytes=10_000,
    idle_s=10.0,
    auth_timeout_s=5.0,
)
T0 = 1000.0


def wire(entity: Any, correlation_id: int = 1, version: int | None = None) -> bytes:
    header = request_header(type(entity), correlation_id, version)
    return frame(encode(header) + encode(entity))


def handshake(cid: int = 1) -> bytes:
    return wire(SaslHandshakeRequest(mechanism="PLAIN"), cid)


def plain(password: str, cid: int = 2, user: str = "alice") -> bytes:
    return wire(SaslAuthenticateRequest(auth_bytes=f"\0{user}\0{password}".encode()), cid)


def metadata(cid: int = 3) -> bytes:
    return wire(
        MetadataRequest(
            topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False
        ),
        cid,
    )


def sasl_state(reauth_ms: int = 0, limits: ConnectionLimits = LIMITS) -> ConnectionState:
    session = SaslSession(
        "SASL_PLAINTEXT", ("PLAIN",), lambda u, m: CREDS.get((u, m)), reauth_ms=reauth_ms,
        clock=lambda: T0,
    )
    return ConnectionState(limits, session, T0)


def plain_state(limits: ConnectionLimits = LIMITS) -> ConnectionState:
    return ConnectionState(limits, SaslSession("PLAINTEXT", (), lambda u, m: None), T0)


def run_sasl(state: ConnectionState, event: Dispatch) -> None:
    """What the SASL handlers do with the session, then the response."""
    session = state.session
    assert session is not None
    if event.header.api_key == 17:
        session.handshake(event.body.mechanism)
    else:
        with contextlib.suppress(AuthenticationFailed):
            session.authenticate(bytes(event.body.auth_bytes))
    state.response_ready(event.slot, [b"answer-%d" % event.header.correlation_id])


def events(state: ConnectionState, now: float = T0) -> list[Any]:
    out = []
    while (event := state.next_event(now)) is not None:
        out.append(event)
    return out


def test_before_authentication_frames_are_taken_one_at_a_time() -> None:
    state = sasl_state()
    state.receive(handshake(1) + plain("wonderland", 2) + metadata(3))
    [first] = events(state)
    assert isinstance(first, Dispatch) and first.header.api_key == 17
    assert not state.reading
    run_sasl(state, first)
    write, second = events(state)
    assert isinstance(write, Write) and isinstance(second, Dispatch)
    assert second.header.api_key == 36
    assert events(state) == []  # Metadata is not even parsed while the login runs
    run_sasl(state, second)
    write, third = events(state)
    assert isinstance(third, Dispatch) and third.header.api_key == 3
    assert third.principal == "User:alice"
    assert state.reading


def test_failed_login_is_answered_once_then_closed() -> None:
    state = sasl_state()
    guesses = b"".join(plain(f"guess{i}", i + 2) for i in range(19)) + plain("wonderland", 30)
    state.receive(handshake(1) + guesses)
    [hs] = events(state)
    run_sasl(state, hs)
    write, guess = events(state)
    run_sasl(state, guess)
    write, close = events(state)
    assert isinstance(write, Write) and write.parts == [b"answer-2"]
    assert isinstance(close, Close) and close.delay_s > 0
    assert events(state) == [] and not state.reading
    state.receive(plain("wonderland", 31))
    assert events(state) == []
    assert state.session is not None and not state.session.authenticated


def test_only_sasl_and_api_versions_before_authentication() -> None:
    state = sasl_state()
    state.receive(wire(ApiVersionsRequest(client_software_name="t", client_software_version="1")))
    [versions] = events(state)
    assert isinstance(versions, Dispatch) and versions.header.api_key == 18
    state.response_ready(versions.slot, [b"v"])
    state.receive(metadata(2))
    write, close = events(state)
    assert isinstance(close, Close) and "before SASL authentication" in close.reason


def test_frame_limit_is_small_until_authenticated() -> None:
    state = sasl_state()
    state.receive((2048).to_bytes(4, "big"))
    [close] = events(state)
    assert isinstance(close, Close) and "limit 1024" in close.reason

    state = sasl_state()
    state.receive(handshake(1) + plain("wonderland", 2))
    for _ in range(2):
        [*_, event] = events(state)
        run_sasl(state, event)
    big = MetadataRequest(
        topics=tuple(_topic(f"t{i:04d}") for i in range(200)),
        allow_auto_topic_creation=False,
        include_topic_authorized_operations=False,
    )
    state.receive(wire(big, 3))
    [_, dispatch] = events(state)
    assert isinstance(dispatch, Dispatch) and dispatch.slot.size > 2048


def _topic(name: str) -> Any:
    from kio.schema.metadata.v12.request import MetadataRequestTopic

    return MetadataRequestTopic(topic_id=None, name=name)


def test_responses_leave_in_request_order() -> None:
    state = plain_state()
    state.receive(metadata(1) + metadata(2) + metadata(3))
    dispatched = events(state)
    assert [d.header.correlation_id for d in dispatched] == [1, 2, 3]
    state.response_ready(dispatched[2].slot, [b"3"])
    state.response_ready(dispatched[1].slot, [b"2"])
    assert events(state) == []
    state.response_ready(dispatched[0].slot, [b"1"])
    assert [w.parts for w in events(state)] == [[b"1"], [b"2"], [b"3"]]


def test_unread_responses_count_in_flight() -> None:
    state = plain_state()
    state.receive(metadata(1))
    [d] = events(state)
    state.response_ready(d.slot, [_FakeFile(50_000)])
    [write] = events(state)
    assert write.files and state.inflight == 50_000
    assert not state.reading  # the client is not reading: stop taking its requests
    state.receive(metadata(2))  # bytes read before the pause wait, unparsed
    assert events(state) == []
    state.write_done(write.slot, T0)
    assert state.inflight == 0 and state.reading
    [d2] = events(state)
    assert isinstance(d2, Dispatch) and d2.header.correlation_id == 2


class _FakeFile:
    """Stands for a FileRecords part (counted by type, so patch the class check)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


@pytest.fixture(autouse=True)
def _fake_files(monkeypatch: pytest.MonkeyPatch) -> None:
    import streamd.kafka.connection as connection

    monkeypatch.setattr(connection, "FileRecords", _FakeFile)


def test_idle_connections_close_and_half_frames_do_not_count() -> None:
    state = plain_state()
    state.receive(metadata(1)[:10])
    state.tick(T0 + 9.9)
    assert events(state) == []
    state.receive(b"\0")  # a byte more, still no whole frame
    state.tick(T0 + 10.0)
    [close] = events(state)
    assert isinstance(close, Close) and close.expected and "idle" in close.reason


def test_a_request_outstanding_is_not_idle() -> None:
    state = plain_state()
    state.receive(metadata(1))
    [d] = events(state)
    state.tick(T0 + 60)
    assert events(state) == []
    state.response_ready(d.slot, [b"r"])
    assert len(events(state, T0 + 60)) == 1
    state.tick(T0 + 69)
    assert events(state) == []
    state.tick(T0 + 70)
    assert isinstance(events(state)[0], Close)


def test_unauthenticated_connections_time_out() -> None:
    state = sasl_state()
    state.receive(handshake(1))
    [hs] = events(state)
    run_sasl(state, hs)
    events(state)
    state.tick(T0 + 4.9)
    assert events(state) == []
    state.tick(T0 + 5.0)
    [close] = events(state)
    assert isinstance(close, Close) and "not authenticated" in close.reason


def login(state: ConnectionState) -> None:
    state.receive(handshake(1) + plain("wonderland", 2))
    for _ in range(2):
        [*_, event] = events(state)
        run_sasl(state, event)
    events(state)


def test_expired_session_may_only_reauthenticate() -> None:
    state = sasl_state(reauth_ms=1000)
    login(state)
    state.receive(metadata(3))
    [d] = events(state, T0 + 0.5)
    state.response_ready(d.slot, [b"m"])
    events(state, T0 + 0.5)
    state.receive(metadata(4))
    [close] = events(state, T0 + 1.0)
    assert isinstance(close, Close) and "expired" in close.reason

    state = sasl_state(reauth_ms=1000)
    login(state)
    state.receive(handshake(5))
    [d] = events(state, T0 + 2.0)
    assert isinstance(d, Dispatch) and d.header.api_key == 17


def test_reauthentication_waits_for_earlier_requests_and_holds_later_ones() -> None:
    state = sasl_state(reauth_ms=1000)
    login(state)
    state.receive(metadata(3) + handshake(4) + plain("wonderland", 5) + metadata(6))
    [m] = events(state)
    assert m.header.api_key == 3
    assert events(state) == []  # the handshake waits for the Metadata answer
    state.response_ready(m.slot, [b"m"])
    write, hs = events(state)
    assert hs.header.api_key == 17
    run_sasl(state, hs)
    write, auth = events(state)
    assert auth.header.api_key == 36
    run_sasl(state, auth)
    write, after = events(state)
    assert after.header.api_key == 3 and after.principal == "User:alice"


def test_drain_answers_what_was_taken_then_closes() -> None:
    state = plain_state()
    state.receive(metadata(1))
    [d] = events(state)
    state.drain()
    state.receive(metadata(2))
    assert events(state) == [] and not state.reading
    state.response_ready(d.slot, [b"1"])
    write, close = events(state)
    assert write.parts == [b"1"]
    assert isinstance(close, Close) and close.expected


def test_unknown_api_versions_version_is_answered_without_a_handler() -> None:
    state = plain_state()
    request = ApiVersionsRequest(client_software_name="t", client_software_version="1")
    state.receive(wire(request, 7, version=99) * 3)
    writes = events(state)
    assert len(writes) == 3 and all(isinstance(w, Write) for w in writes)


def test_garbage_closes() -> None:
    state = plain_state()
    state.receive(b"\xff\xff\xff\xff")
    [close] = events(state)
    assert isinstance(close, Close) and not close.expected


def test_frames_received_wait_while_too_much_is_in_flight() -> None:
    """A client that pipelines requests and reads no answers: once the answers waiting for it
    exceed the bound, frames already read stay unparsed, and are taken as answers leave."""
    state = plain_state()
    state.receive(b"".join(metadata(i) for i in range(1, 6)))
    dispatched = events(state)
    assert len(dispatched) == 5  # small requests: all of them fit
    state.response_ready(dispatched[0].slot, [_FakeFile(6_000)])
    state.response_ready(dispatched[1].slot, [_FakeFile(6_000)])
    state.receive(b"".join(metadata(i) for i in range(6, 9)))
    [write] = events(state)  # the first answer goes out; nothing new is taken
    assert state.inflight > LIMITS.max_inflight_bytes and not state.reading
    state.write_done(write.slot, T0)  # back under the bound
    second, *taken = events(state)
    assert isinstance(second, Write)
    assert [e.header.correlation_id for e in taken] == [6, 7, 8]


def test_a_full_transport_buffer_stops_taking_frames() -> None:
    state = plain_state()
    state.writing_paused = True
    state.receive(metadata(1))
    assert events(state) == [] and not state.reading
    state.writing_paused = False
    [d] = events(state)
    assert isinstance(d, Dispatch)


def test_after_a_v0_handshake_frames_are_bare_tokens_one_at_a_time() -> None:
    from streamd.kafka.connection import Token

    state = sasl_state()
    tokens = frame(b"\0alice\0guess") + frame(b"\0alice\0wonderland")
    state.receive(wire(SaslHandshakeRequest(mechanism="PLAIN"), 1, version=0) + tokens)
    [hs] = events(state)
    assert state.session is not None
    assert state.session.handshake("PLAIN") == 0
    state.session.raw_tokens = True  # what the v0 handler sets
    state.response_ready(hs.slot, [b"hs"])
    write, token = events(state)
    assert isinstance(token, Token) and token.token == b"\0alice\0guess"
    with contextlib.suppress(AuthenticationFailed):
        state.session.authenticate(token.token)
    state.response_ready(token.slot, None)  # a failed v0 login is not answered...
    [close] = events(state)
    assert isinstance(close, Close)  # ...the connection closes; the second token is never read
    assert not state.session.authenticated
