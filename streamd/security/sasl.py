"""Per-connection authentication state: which protocol the listener speaks and who is talking.

:class:`SaslSession` is sans-IO. The Kafka front asks it whether a request may be served yet
(``authenticated``) and feeds it SaslHandshake / SaslAuthenticate; it answers with mechanism
bytes or raises. States on a SASL listener: ``handshake`` -> ``authenticate`` ->
``authenticated``, or ``failed`` (the connection is answered once more, then closed; nothing
after the failing frame is evaluated). On PLAINTEXT and SSL listeners the session starts
authenticated, as ``User:ANONYMOUS`` or, with a TLS client certificate, as the certificate's
principal (:mod:`streamd.security.principal`).

One exchange at a time: the front hands a connection's SASL frames over strictly one after the
other, and the session refuses a step that starts while another is running (the exchange fails
rather than letting two messages share one mechanism state).

Re-authentication (KIP-368): with ``reauth_ms`` > 0 a successful login is valid for that long
(``session_lifetime_ms`` tells v1+ clients), ``expired(now)`` says when it ran out, and a
SaslHandshake on an authenticated session starts a new exchange that must use the same
mechanism and prove the same principal; anything else fails it. A deleted user or a changed
password therefore ends a session at its expiry at the latest. With ``reauth_ms`` = 0 (Kafka's
default) sessions never expire and a second handshake is an illegal state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
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
    @property
    def username(self) -> str | None: ...

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


class SaslSession:
    def __init__(
        self,
        protocol: str,
        mechanisms: Iterable[str],
        lookup: CredentialLookup,
        principal: str = ANONYMOUS,
        *,
        reauth_ms: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.protocol = protocol
        self.mechanisms = tuple(mechanisms)
        self._lookup = lookup
        self.principal = principal
        self.requires_sasl = protocol.startswith("SASL_")
        self.state = "handshake" if self.requires_sasl else "authenticated"
        self.mechanism: str | None = None
        """The mechanism of the current (or last) authentication."""
        self.reauth_ms = reauth_ms
        self.expires_at: float | None = None
        """Clock time at which an authenticated SASL session must re-authenticate."""
        self.reauthenticating = False
        self._clock = clock
        self._mech: Mechanism | None = None
        self._guard = threading.Lock()
        """Held for every state transition (steps run in worker threads)."""
        self._running = False
        self.raw_tokens = False
        """Set after a SaslHandshake v0: the tokens then travel as bare size-prefixed frames
        (Kafka's pre-SaslAuthenticate framing) until authentication completes."""

    @property
    def authenticated(self) -> bool:
        return self.state == "authenticated"

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at and self.authenticated

    @property
    def session_lifetime_ms(self) -> int:
        """What SaslAuthenticate v1+ answers after a successful login (0: never re-authenticate)."""
        return self.reauth_ms if self.requires_sasl and self.authenticated else 0

    def handshake(self, mechanism: str) -> ErrorCode:
        with self._guard:
            if self._running:
                self._fail()
                return ErrorCode.ILLEGAL_SASL_STATE
            if self.state == "authenticated" and self.requires_sasl and self.reauth_ms > 0:
                if mechanism != self.mechanism:
                    self._fail()
                    return ErrorCode.UNSUPPORTED_SASL_MECHANISM
                self.reauthenticating = True
            elif self.state != "handshake":
                if self.requires_sasl:
                    self._fail()
                return ErrorCode.ILLEGAL_SASL_STATE
            if mechanism not in self.mechanisms:
                return ErrorCode.UNSUPPORTED_SASL_MECHANISM
            self._mech = new_mechanism(mechanism, self._lookup)
            self.mechanism = mechanism
            self.state = "authenticate"
            return ErrorCode.NONE

    def authenticate(self, token: bytes) -> bytes:
        """One SaslAuthenticate round; raises AuthenticationFailed or IllegalSaslState.

        Runs in a worker thread, the mechanism step outside any lock (it may derive a salted
        password). A second call while one runs fails the session, and the first then finds
        the session failed and fails too: two messages never share one exchange.
        """
        with self._guard:
            if self._running:
                self._fail()
                raise IllegalSaslState("concurrent SASL steps on one connection")
            mech = self._mech
            if self.state != "authenticate" or mech is None:
                self._fail()
                raise IllegalSaslState("SaslAuthenticate without a successful SaslHandshake")
            self._running = True
        try:
            try:
                reply = mech.step(token)
            except AuthenticationFailed:
                with self._guard:
                    self._fail()
                raise
            with self._guard:
                if self.state != "authenticate" or self._mech is not mech:
                    raise IllegalSaslState("the session failed while this step ran")
                if mech.complete:
                    self._complete(f"User:{mech.username}")
            return reply
        finally:
            with self._guard:
                self._running = False

    def _complete(self, principal: str) -> None:
        self._mech = None
        if self.reauthenticating and principal != self.principal:
            self._fail()
            raise AuthenticationFailed("Cannot change principals during re-authentication")
        self.principal = principal
        self.state = "authenticated"
        self.reauthenticating = False
        if self.reauth_ms > 0:
            self.expires_at = self._clock() + self.reauth_ms / 1000

    def _fail(self) -> None:
        self.state = "failed"
        self._mech = None
