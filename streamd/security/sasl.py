"""Per-connection authentication state: which protocol the listener speaks and who is talking.

:class:`SaslSession` is sans-IO. The Kafka front asks it whether a request may be served yet
(``authenticated``) and feeds it SaslHandshake / SaslAuthenticate; it answers with mechanism
bytes or raises. States on a SASL listener: ``handshake`` -> ``authenticate`` ->
``authenticated``, or ``failed`` (the connection is closed after the answer). On PLAINTEXT and
SSL listeners the session starts authenticated, as ``User:ANONYMOUS`` or, with a TLS client
certificate, as ``User:<subject DN>`` (Kafka's default principal builder).

Re-authentication (KIP-368) is not offered: SaslAuthenticate answers session_lifetime 0, so
clients never attempt it, and a second handshake on an authenticated connection is an illegal
state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from streamd.errors import ErrorCode
from streamd.security.scram import (
    MECHANISMS,
    AuthenticationFailed,
    CredentialLookup,
    ScramCredential,
    ScramServer,
)

ANONYMOUS = "User:ANONYMOUS"
PLAIN = "PLAIN"
SUPPORTED_MECHANISMS = (PLAIN, *MECHANISMS)
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


class IllegalSaslState(Exception):
    pass


class Mechanism(Protocol):
    username: str | None

    @property
    def complete(self) -> bool: ...

    def step(self, message: bytes) -> bytes: ...


class PlainServer:
    """SASL/PLAIN (RFC 4616) checked against the stored SCRAM credentials of the user."""

    def __init__(self, lookup: CredentialLookup) -> None:
        self._lookup = lookup
        self._done = False
        self.username: str | None = None

    @property
    def complete(self) -> bool:
        return self._done

    def step(self, message: bytes) -> bytes:
        try:
            authzid, user, password = message.decode("utf-8").split("\0")
        except ValueError:
            raise AuthenticationFailed() from None
        if not user or (authzid and authzid != user):
            raise AuthenticationFailed()
        candidates = [c for c in (self._lookup(user, m) for m in MECHANISMS) if c is not None]
        if not candidates:
            _DUMMY.verify_password(password)  # same work as a real check: no timing oracle
            raise AuthenticationFailed()
        if not any(c.verify_password(password) for c in candidates):
            raise AuthenticationFailed()
        self.username = user
        self._done = True
        return b""


_DUMMY = ScramCredential.from_password(MECHANISMS["SCRAM-SHA-256"], "-", salt=b"\0" * 32)


def new_mechanism(name: str, lookup: CredentialLookup) -> Mechanism:
    if name == PLAIN:
        return PlainServer(lookup)
    return ScramServer(MECHANISMS[name], lookup)


def principal_from_cert(peercert: dict[str, object] | None) -> str | None:
    """``User:CN=..,OU=..,O=..`` from a verified peer certificate (most specific RDN first)."""
    if not peercert:
        return None
    subject = peercert.get("subject")
    if not isinstance(subject, tuple):
        return None
    parts = [f"{_RDN_NAMES.get(k, k)}={v}" for rdn in reversed(subject) for k, v in rdn]
    return "User:" + ",".join(parts) if parts else None


_RDN_NAMES = {
    "commonName": "CN",
    "organizationalUnitName": "OU",
    "organizationName": "O",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "countryName": "C",
}


class SaslSession:
    def __init__(
        self,
        protocol: str,
        mechanisms: Iterable[str],
        lookup: CredentialLookup,
        principal: str = ANONYMOUS,
    ) -> None:
        self.protocol = protocol
        self.mechanisms = tuple(mechanisms)
        self._lookup = lookup
        self.principal = principal
        self.requires_sasl = protocol.startswith("SASL_")
        self.state = "handshake" if self.requires_sasl else "authenticated"
        self._mech: Mechanism | None = None
        self.raw_tokens = False
        """Set after a SaslHandshake v0: the tokens then travel as bare size-prefixed frames
        (Kafka's pre-SaslAuthenticate framing) until authentication completes."""

    @property
    def authenticated(self) -> bool:
        return self.state == "authenticated"

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    def handshake(self, mechanism: str) -> ErrorCode:
        if self.state != "handshake":
            return ErrorCode.ILLEGAL_SASL_STATE
        if mechanism not in self.mechanisms:
            return ErrorCode.UNSUPPORTED_SASL_MECHANISM
        self._mech = new_mechanism(mechanism, self._lookup)
        self.state = "authenticate"
        return ErrorCode.NONE

    def authenticate(self, token: bytes) -> bytes:
        """One SaslAuthenticate round; raises AuthenticationFailed or IllegalSaslState."""
        mech = self._mech
        if self.state != "authenticate" or mech is None:
            self.state = "failed"
            raise IllegalSaslState("SaslAuthenticate without a successful SaslHandshake")
        try:
            reply = mech.step(token)
        except AuthenticationFailed:
            self.state = "failed"
            self._mech = None
            raise
        if mech.complete:
            self.principal = f"User:{mech.username}"
            self.state = "authenticated"
            self._mech = None
        return reply
