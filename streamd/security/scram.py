"""SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, RFC 7677): credentials and the server exchange.

A stored credential is ``(salt, iterations, StoredKey, ServerKey)``: enough to verify a client
proof and to sign the server's answer, never enough to log in (the salted password is not kept).

:class:`ScramServer` is a sans-IO state machine: feed it each client message, get the server's
message back, or :class:`AuthenticationFailed`. Every failure carries the same message and, for
an unknown user, the exchange still runs to the final step against a fake credential derived
from a per-process secret, so neither the answer nor the step at which it comes tells an
attacker whether the user exists, the nonce was wrong or the proof was tampered with.
Channel binding is not offered (gs2 flag ``n``; ``y`` accepted as RFC 5802 requires when the
server advertises none; ``p`` refused). Extensions, among them Kafka's ``tokenauth=true``
(delegation tokens, unsupported), fail the exchange.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

MIN_ITERATIONS = 4096
MAX_ITERATIONS = 16384
FAILED = "Authentication failed: invalid credentials"


class AuthenticationFailed(Exception):
    """A login that must be answered with SASL_AUTHENTICATION_FAILED (message is safe to send)."""

    def __init__(self, message: str = FAILED) -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class ScramMechanism:
    name: str
    hash_name: str
    code: int  # Kafka's ScramMechanism code in Describe/AlterUserScramCredentials

    @property
    def digest_size(self) -> int:
        return hashlib.new(self.hash_name).digest_size

    def h(self, data: bytes) -> bytes:
        return hashlib.new(self.hash_name, data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.hash_name).digest()

    def salted_password(self, password: str, salt: bytes, iterations: int) -> bytes:
        return hashlib.pbkdf2_hmac(self.hash_name, _saslprep(password), salt, iterations)


SHA256 = ScramMechanism("SCRAM-SHA-256", "sha256", 1)
SHA512 = ScramMechanism("SCRAM-SHA-512", "sha512", 2)
MECHANISMS: dict[str, ScramMechanism] = {m.name: m for m in (SHA256, SHA512)}
BY_CODE: dict[int, ScramMechanism] = {m.code: m for m in (SHA256, SHA512)}


@dataclass(frozen=True, slots=True)
class ScramCredential:
    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_salted_password(
        cls, mech: ScramMechanism, salted: bytes, salt: bytes, iterations: int
    ) -> ScramCredential:
        client_key = mech.hmac(salted, b"Client Key")
        return cls(
            mechanism=mech.name,
            salt=salt,
            iterations=iterations,
            stored_key=mech.h(client_key),
            server_key=mech.hmac(salted, b"Server Key"),
        )

    @classmethod
    def from_password(
        cls,
        mech: ScramMechanism,
        password: str,
        iterations: int = MIN_ITERATIONS,
        salt: bytes | None = None,
    ) -> ScramCredential:
        salt = secrets.token_bytes(mech.digest_size) if salt is None else salt
        salted = mech.salted_password(password, salt, iterations)
        return cls.from_salted_password(mech, salted, salt, iterations)

    def verify_password(self, password: str) -> bool:
        """For SASL/PLAIN against a SCRAM credential; constant-time on the key comparison."""
        mech = MECHANISMS[self.mechanism]
        salted = mech.salted_password(password, self.salt, self.iterations)
        candidate = mech.h(mech.hmac(salted, b"Client Key"))
        return hmac.compare_digest(candidate, self.stored_key)


def _saslprep(password: str) -> bytes:
    # Kafka clients send the password UTF-8 encoded without SASLprep normalization; so do we.
    return password.encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise AuthenticationFailed() from None


def _attributes(message: str) -> list[tuple[str, str]]:
    out = []
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise AuthenticationFailed()
        out.append((key, value))
    return out


def _unescape_name(name: str) -> str:
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise AuthenticationFailed()
    return name.replace("=2C", ",").replace("=3D", "=")


CredentialLookup = Callable[[str, str], "ScramCredential | None"]
_FAKE_KEY = secrets.token_bytes(32)


@dataclass(frozen=True, slots=True)
class ScramExchange:
    """Everything the client-first message fixed, bound together once and never changed.

    The final step verifies against this one record: the user it names, that user's credential
    and the nonce sent to that client. A later message cannot swap one of them (a second
    client-first naming another user fails the exchange instead), so a proof computed from one
    user's password can never authenticate another user.
    """

    username: str
    authzid: str | None
    credential: ScramCredential
    known: bool
    nonce: str
    gs2_header: str
    client_first_bare: str
    server_first: str


class ScramServer:
    """One server side of one SCRAM exchange: ``step`` twice, then ``username`` is proven.

    Steps must not run concurrently (the Kafka front serializes a connection's SASL frames);
    a step in the wrong state fails the exchange for good.
    """

    def __init__(
        self,
        mechanism: ScramMechanism,
        lookup: CredentialLookup,
        *,
        nonce: str | None = None,
        fake_iterations: int = MIN_ITERATIONS,
    ) -> None:
        self.mech = mechanism
        self._lookup = lookup
        self._server_nonce = nonce or secrets.token_urlsafe(24)
        self._fake_iterations = fake_iterations
        self._state = "first"
        self._exchange: ScramExchange | None = None

    @property
    def complete(self) -> bool:
        return self._state == "done"

    @property
    def username(self) -> str | None:
        """The proven user once complete (the claimed one after the first step)."""
        return None if self._exchange is None else self._exchange.username

    @property
    def authzid(self) -> str | None:
        return None if self._exchange is None else self._exchange.authzid

    def step(self, message: bytes) -> bytes:
        state, self._state = self._state, "busy"
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail() from None
        if state == "first":
            return self._client_first(text)
        if state == "final":
            return self._client_final(text)
        raise self._fail()

    def _fail(self) -> AuthenticationFailed:
        self._state = "failed"
        return AuthenticationFailed()

    def _client_first(self, text: str) -> bytes:
        flag, sep1, rest = text.partition(",")
        authz, sep2, bare = rest.partition(",")
        if not (sep1 and sep2) or flag not in ("n", "y"):
            raise self._fail()
        if authz and not authz.startswith("a="):
            raise self._fail()
        attrs = _attributes(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            raise self._fail()
        if attrs[0][1] == "" or any(k == "m" for k, _ in attrs):
            raise self._fail()
        client_nonce = attrs[1][1]
        if not client_nonce or any(not 0x21 <= ord(c) <= 0x7E or c == "," for c in client_nonce):
            raise self._fail()
        user = _unescape_name(attrs[0][1])
        authzid = _unescape_name(authz[2:]) if authz else None
        if authzid and authzid != user:
            raise self._fail()
        nonce = client_nonce + self._server_nonce
        credential = self._lookup(user, self.mech.name)
        known = credential is not None
        if credential is None:
            credential = self._fake_credential(user)
        server_first = f"r={nonce},s={_b64(credential.salt)},i={credential.iterations}"
        self._exchange = ScramExchange(
            username=user,
            authzid=authzid,
            credential=credential,
            known=known,
            nonce=nonce,
            gs2_header=f"{flag},{authz},",
            client_first_bare=bare,
            server_first=server_first,
        )
        self._state = "final"
        return server_first.encode("utf-8")

    def _fake_credential(self, user: str) -> ScramCredential:
        """Deterministic per user (a repeated probe sees the same salt), unusable for login."""
        mech = self.mech
        seed = hmac.new(_FAKE_KEY, f"{mech.name}\0{user}".encode(), "sha256").digest()
        salt = seed[:16]
        key = mech.hmac(seed, b"fake")
        return ScramCredential(mech.name, salt, self._fake_iterations, mech.h(key), key)

    def _client_final(self, text: str) -> bytes:
        ex = self._exchange
        if ex is None:
            raise self._fail()
        attrs = _attributes(text)
        if len(attrs) < 3 or attrs[0][0] != "c" or attrs[1][0] != "r" or attrs[-1][0] != "p":
            raise self._fail()
        without_proof = text[: text.rindex(",p=")]
        channel = _unb64(attrs[0][1])
        proof = _unb64(attrs[-1][1])
        auth_message = ",".join((ex.client_first_bare, ex.server_first, without_proof))
        mech, cred = self.mech, ex.credential
        signature = mech.hmac(cred.stored_key, auth_message.encode("utf-8"))
        ok = len(proof) == len(signature)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        ok &= hmac.compare_digest(mech.h(client_key), cred.stored_key)
        ok &= hmac.compare_digest(attrs[1][1].encode(), ex.nonce.encode())
        ok &= hmac.compare_digest(channel, ex.gs2_header.encode("utf-8"))
        if not (ok and ex.known):
            raise self._fail()
        self._state = "done"
        server_signature = mech.hmac(cred.server_key, auth_message.encode("utf-8"))
        return f"v={_b64(server_signature)}".encode()
