"""SaslHandshake and SaslAuthenticate: the Kafka side of :mod:`streamd.security.sasl`.

Both handshake flows are served: v1, where tokens travel inside SaslAuthenticate (every client
since Kafka 1.0), and v0, where the tokens that follow the handshake are bare size-prefixed
frames answered the same way (:func:`raw_token`, called by the server for such frames); a failed
v0 login gets no answer, only the close, as in Kafka.
A failed login is answered with SASL_AUTHENTICATION_FAILED after
``sasl.failed_authentication_delay_ms`` (slowing down password guessing), with one message for
every cause; the connection then closes (:mod:`streamd.kafka.connection` evaluates nothing
after it). Mechanism steps run on the security service's own authentication pool (SASL/PLAIN
derives the salted password: thousands of HMAC rounds), never on the event loop.

A successful login answers ``session_lifetime_ms`` (KIP-368) when
``kafka.connections_max_reauth_ms`` is set; the same handshake and authenticate requests on an
authenticated connection re-authenticate it. Every login, re-authentication and failure is
recorded on the audit logger.
"""

from __future__ import annotations

import asyncio
from typing import Any

from streamd.errors import ErrorCode
from streamd.kafka.apis import api
from streamd.kafka.authz import client_host
from streamd.kafka.context import KafkaContext, Request
from streamd.security import audit
from streamd.security.sasl import IllegalSaslState, SaslSession
from streamd.security.scram import AuthenticationFailed


@api(17, "SaslHandshake", 0, 1)
async def sasl_handshake(req: Request) -> dict[str, Any]:
    session = req.session
    security = req.ctx.security
    if session is None or not session.requires_sasl:
        mechanisms = list(security.mechanisms) if security is not None else []
        return {"error_code": ErrorCode.ILLEGAL_SASL_STATE, "mechanisms": mechanisms}
    code = session.handshake(req.body.mechanism)
    if session.failed:
        audit.authentication(
            session.principal, client_host(req.peer), req.body.mechanism, False,
            "mechanism change on re-authentication"
            if code == ErrorCode.UNSUPPORTED_SASL_MECHANISM else "unexpected SaslHandshake",
        )
    if code == ErrorCode.NONE:
        session.raw_tokens = req.version == 0
    return {"error_code": code, "mechanisms": list(session.mechanisms)}


async def raw_token(
    ctx: KafkaContext, session: SaslSession, peer: str, token: bytes
) -> bytes | None:
    """One raw SASL token after a v0 handshake: the size-prefixed reply, or None when the
    login failed (the connection then closes without an answer, as in Kafka)."""
    security = ctx.security
    assert security is not None
    host = client_host(peer)
    try:
        reply: bytes = await security.run_auth(session.authenticate, token)
    except (IllegalSaslState, AuthenticationFailed) as exc:
        audit.authentication("User:ANONYMOUS", host, session.mechanism, False, str(exc))
        await asyncio.sleep(security.failed_auth_delay_s)
        return None
    if session.authenticated:
        audit.authentication(session.principal, host, session.mechanism, True)
    return len(reply).to_bytes(4, "big") + reply


@api(36, "SaslAuthenticate", 0, 2)
async def sasl_authenticate(req: Request) -> dict[str, Any]:
    session = req.session
    security = req.ctx.security
    if session is None or security is None or not session.requires_sasl:
        return {"error_code": ErrorCode.ILLEGAL_SASL_STATE, "error_message": "not a SASL listener"}
    host = client_host(req.peer)
    reauth = session.reauthenticating
    try:
        reply = await security.run_auth(session.authenticate, bytes(req.body.auth_bytes))
    except IllegalSaslState as exc:
        audit.authentication(session.principal, host, session.mechanism, False, str(exc))
        return {"error_code": ErrorCode.ILLEGAL_SASL_STATE, "error_message": str(exc)}
    except AuthenticationFailed as exc:
        audit.authentication(
            session.principal if reauth else "User:ANONYMOUS", host, session.mechanism, False,
            "re-authentication failed" if reauth else "invalid credentials",
        )
        await asyncio.sleep(security.failed_auth_delay_s)
        return {"error_code": ErrorCode.SASL_AUTHENTICATION_FAILED, "error_message": str(exc)}
    if session.authenticated:
        audit.authentication(
            session.principal, host, session.mechanism, True,
            "re-authenticated" if reauth else "",
        )
    return {
        "error_code": ErrorCode.NONE,
        "auth_bytes": reply,
        "session_lifetime": session.session_lifetime_ms,
    }
