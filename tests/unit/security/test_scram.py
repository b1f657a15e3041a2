"""SCRAM server state machine: RFC 7677 vectors, failures that look alike, SHA-512."""

from __future__ import annotations

import base64

import pytest

from streamd.security.scram import (
    FAILED,
    SHA256,
    SHA512,
    AuthenticationFailed,
    ScramCredential,
    ScramServer,
)
from tests.unit.security.scram_client import ScramClient

# RFC 7677 section 3.
USER, PASSWORD = "user", "pencil"
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

CREDENTIAL = ScramCredential.from_password(SHA256, PASSWORD, 4096, salt=SALT)


def lookup(user: str, mechanism: str) -> ScramCredential | None:
    return CREDENTIAL if (user, mechanism) == (USER, SHA256.name) else None


def server() -> ScramServer:
    return ScramServer(SHA256, lookup, nonce=SERVER_NONCE)


def test_rfc7677_exchange() -> None:
    s = server()
    assert s.step(CLIENT_FIRST) == SERVER_FIRST
    assert s.step(CLIENT_FINAL) == SERVER_FINAL
    assert s.complete and s.username == USER


def test_credential_keeps_no_password_material() -> None:
    fields = {k: getattr(CREDENTIAL, k) for k in CREDENTIAL.__slots__}
    salted = SHA256.salted_password(PASSWORD, SALT, 4096)
    assert PASSWORD.encode() not in repr(fields).encode()
    assert salted not in fields.values()
    assert CREDENTIAL.verify_password(PASSWORD)
    assert not CREDENTIAL.verify_password("pencil2")


def _failure(first: bytes, final: bytes, lookup_fn=lookup) -> str:  # type: ignore[no-untyped-def]
    s = ScramServer(SHA256, lookup_fn, nonce=SERVER_NONCE)
    server_first = s.step(first)
    with pytest.raises(AuthenticationFailed) as info:
        s.step(final)
    assert not s.complete
    return f"{len(server_first.split(b','))}:{info.value}"


def test_bad_client_nonce_fails() -> None:
    tampered = CLIENT_FINAL.replace(b"rOprNGfwEbeRWgbNEkqO%", b"rOprNGfwEbeRWgbNEkqX%")
    assert tampered != CLIENT_FINAL
    assert _failure(CLIENT_FIRST, tampered) == f"3:{FAILED}"


def test_final_nonce_without_the_server_part_fails() -> None:
    final = CLIENT_FINAL.replace(SERVER_NONCE.encode(), b"")
    assert _failure(CLIENT_FIRST, final) == f"3:{FAILED}"


def test_tampered_proof_fails() -> None:
    proof = bytearray(base64.b64decode(CLIENT_FINAL.rsplit(b"p=", 1)[1]))
    proof[0] ^= 1
    final = CLIENT_FINAL.rsplit(b"p=", 1)[0] + b"p=" + base64.b64encode(bytes(proof))
    assert _failure(CLIENT_FIRST, final) == f"3:{FAILED}"


def test_unknown_user_fails_only_at_the_end_like_a_wrong_password() -> None:
    client = ScramClient(SHA256, "mallory", PASSWORD, CLIENT_NONCE)
    s = ScramServer(SHA256, lookup, nonce=SERVER_NONCE)
    server_first = s.step(client.first())
    assert b",s=" in server_first and server_first.endswith(b",i=4096")
    with pytest.raises(AuthenticationFailed) as unknown:
        s.step(client.final(server_first))
    again = ScramServer(SHA256, lookup, nonce=SERVER_NONCE).step(client.first())
    assert again == server_first, "a probed unknown user must see a stable fake salt"

    wrong = ScramClient(SHA256, USER, "wrong", CLIENT_NONCE)
    s = ScramServer(SHA256, lookup, nonce=SERVER_NONCE)
    with pytest.raises(AuthenticationFailed) as bad_password:
        s.step(wrong.final(s.step(wrong.first())))
    assert str(unknown.value) == str(bad_password.value) == FAILED


def test_unknown_user_cannot_log_in_even_knowing_the_fake_salt() -> None:
    # The fake credential's keys are secret; no password matches them.
    client = ScramClient(SHA256, "ghost", "", CLIENT_NONCE)
    s = ScramServer(SHA256, lookup, nonce=SERVER_NONCE)
    with pytest.raises(AuthenticationFailed):
        s.step(client.final(s.step(client.first())))


@pytest.mark.parametrize(
    "first",
    [
        b"p=tls-unique,,n=user,r=abc",  # channel binding requested: not offered
        b"n,,n=user",  # no nonce
        b"n,,r=abc,n=user",  # wrong order
        b"n,,n=user,r=",  # empty nonce
        b"n,,n=us=er,r=abc",  # bad escape
        b"n,,n=user,r=abc,tokenauth=true",  # delegation token extension
        b"n,a=other,n=user,r=abc",  # authzid for someone else
        b"\xff\xfe",
    ],
)
def test_malformed_client_first_fails(first: bytes) -> None:
    with pytest.raises(AuthenticationFailed, match=FAILED):
        server().step(first)


def test_channel_binding_header_must_match() -> None:
    final = CLIENT_FINAL.replace(b"c=biws", b"c=eSws")  # "y,," instead of "n,,"
    assert _failure(CLIENT_FIRST, final) == f"3:{FAILED}"


def test_no_step_after_failure_or_completion() -> None:
    s = server()
    s.step(CLIENT_FIRST)
    s.step(CLIENT_FINAL)
    with pytest.raises(AuthenticationFailed):
        s.step(CLIENT_FINAL)


def test_sha512_round_trip() -> None:
    cred = ScramCredential.from_password(SHA512, "s3cret", 4096)
    client = ScramClient(SHA512, "alice", "s3cret", "abcdefgh")
    s = ScramServer(SHA512, lambda u, m: cred if u == "alice" else None)
    server_first = s.step(client.first())
    final = client.final(server_first)
    assert s.step(final) == client.expected_server_final
    assert s.username == "alice"


def test_sha512_wrong_password() -> None:
    cred = ScramCredential.from_password(SHA512, "s3cret", 4096)
    client = ScramClient(SHA512, "alice", "guess", "abcdefgh")
    s = ScramServer(SHA512, lambda u, m: cred)
    with pytest.raises(AuthenticationFailed):
        s.step(client.final(s.step(client.first())))
