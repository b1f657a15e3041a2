"""SaslHandshake and SaslAuthenticate: the Kafka side of :mod:`streamd.security.sasl`.

Both handshake flows are served: v1, where tokens travel inside SaslAuthenticate (every client
since Kafka 1.0), and v0, where the tokens that follow the handshake are bare size-prefixed
frames answered the same way (:func:`raw_token`, called by the server for such frames); a failed
v0 login gets no answer, only the close, as in Kafka.
A failed login is answered with SASL_AUTHENTICATION_FAILED after
``sasl.failed_authentication_delay_ms`` (slowing down password guessing), with one message for
every cause; the server then closes the connection. Mechanism steps run off the event loop
(SASL/PLAIN derives the salted password, thousands of HMAC rounds).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streamd.errors import ErrorCode
from streamd.kafka.apis import api
from streamd.kafka.context import Request
from streamd.security.sasl import IllegalSaslState
from streamd.security.scram import AuthenticationFailed

log = logging.getLogger("streamd.security")


def _not_sasl(req: Request) -> bool:
    return req.session is None or not req.session.requires_sasl


@api(17, "SaslHandshake", 0, 1)
async def sasl_handshake(req: Request) -> dict[str, Any]:
    session = req.session
    if _not_sasl(req):
        mechanisms = list(req.ctx.security.mechanisms) if req.ctx.security is not None else []
        return {"error_code": ErrorCode.ILLEGAL_SASL_STATE, "mechanisms": mechanisms}
    code = session.handshake(req.body.mechanism)
    if code == ErrorCode.NONE and req.version == 0:
        session.raw_tokens = True
    return {"error_code": code, "mechanisms": list(session.mechanisms)}


async def raw_token(ctx: Any, session: Any, peer: str, token: bytes) -> bytes | None:
    """One raw SASL token after a v0 handshake: the size-prefixed reply, or None when the
    login failed (the server then closes the connection)."""
    try:
        reply: bytes = await asyncio.to_thread(session.authenticate, token)
    except (IllegalSaslState, AuthenticationFailed):
        log.info("failed SASL authentication from %s", peer)
        await asyncio.sleep(ctx.security.failed_auth_delay_s)
        return None
    return len(reply).to_bytes(4, "big") + reply


@api(36, "SaslAuthenticate", 0, 2)
async def sasl_authenticate(req: Request) -> dict[str, Any]:
    session = req.session
    if _not_sasl(req):
        return {"error_code": ErrorCode.ILLEGAL_SASL_STATE, "error_message": "not a SASL listener"}
    try:
        reply = await asyncio.to_thread(session.authenticate, bytes(req.body.auth_bytes))
    except IllegalSaslState as exc:
        return {"error_code": ErrorCode.ILLEGAL_SASL_STATE, "error_message": str(exc)}
    except AuthenticationFailed as exc:
        log.info("failed SASL authentication from %s", req.peer)
        await asyncio.sleep(req.ctx.security.failed_auth_delay_s)
        return {"error_code": ErrorCode.SASL_AUTHENTICATION_FAILED, "error_message": str(exc)}
    return {"error_code": ErrorCode.NONE, "auth_bytes": reply, "session_lifetime": 0}
