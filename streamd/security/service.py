"""The broker's security services, built from config: stores, authorizer, SASL sessions.

``authorizer`` is None when ``security.authorization`` is false: then every request is allowed
(the PLAINTEXT default, where nothing changes for existing clients) and the ACL APIs answer
SECURITY_DISABLED, as Kafka does without an authorizer. Credentials and user management work
either way, so users can be prepared before SASL listeners are turned on.

Bootstrap users (``security.bootstrap_users``) are created at startup only when the user has no
credential for that mechanism yet: a password changed later through the Kafka API is never reset
by a restart. Their passwords live in the config source only; they are hashed before storing.

Authentication steps (SASL/PLAIN derives a salted password: thousands of HMAC rounds) run on
their own small thread pool (``sasl.auth_threads``, at the lowest CPU priority), never on the
default executor that group commit's fsync jobs use: a flood of logins, valid or not, then
queues behind itself instead of behind (or in front of) acknowledgements. One connection has at
most one step queued (the front serializes a connection until it is authenticated), so the queue
is bounded by the number of connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from streamd.security.acl import Authorizer
from streamd.security.principal import principal_from_der
from streamd.security.sasl import ANONYMOUS, SaslSession
from streamd.security.scram import MECHANISMS, ScramCredential
from streamd.security.store import AclStore, CredentialStore

log = logging.getLogger("streamd.security")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BootstrapUser:
    name: str
    password: str
    mechanism: str

    def __repr__(self) -> str:
        return f"BootstrapUser({self.name!r}, <redacted>, {self.mechanism!r})"


def parse_bootstrap_users(text: str) -> tuple[BootstrapUser, ...]:
    """``user:password:MECHANISM`` entries separated by ``,`` or ``;`` (password may hold ':')."""
    out = []
    for item in filter(None, (s.strip() for s in text.replace(";", ",").split(","))):
        user, sep1, rest = item.partition(":")
        password, sep2, mechanism = rest.rpartition(":")
        if not (sep1 and sep2 and user and password) or mechanism not in MECHANISMS:
            raise ValueError(
                "expected user:password:SCRAM-SHA-256|SCRAM-SHA-512 entries separated by ','"
            )
        out.append(BootstrapUser(user, password, mechanism))
    return tuple(out)


_NEXT_PRINCIPAL = re.compile(r"[;,](?=\s*[A-Za-z][A-Za-z0-9_]*:)|;")


def parse_principals(text: str) -> tuple[str, ...]:
    """Principals separated by ``;`` (Kafka's ``super.users`` separator) or by a ``,`` that
    starts another ``Type:`` principal: a certificate principal such as
    ``User:CN=admin,O=acme`` keeps its commas."""
    out = tuple(filter(None, (s.strip() for s in _NEXT_PRINCIPAL.split(text))))
    for p in out:
        kind, sep, name = p.partition(":")
        if not (sep and kind and name):
            raise ValueError(f"principal {p!r} is not of the form User:name")
    return out


AUTH_NICENESS = 19


def _lower_priority() -> None:
    """Password hashing runs at the lowest CPU priority (Linux: per thread): on a busy machine
    the event loop and group commit come first, so a login flood slows logins, not produce."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), AUTH_NICENESS)
    except (AttributeError, OSError) as exc:
        log.debug("authentication threads keep their priority: %s", exc)


class SecurityService:
    def __init__(self, data_dir: Path, config: Mapping[str, Any]) -> None:
        directory = Path(data_dir) / "security"
        self.credentials = CredentialStore(directory)
        self.acls = AclStore(directory)
        self.mechanisms = tuple(
            filter(None, (m.strip() for m in str(config["sasl.mechanisms"]).split(",")))
        )
        self.failed_auth_delay_s = int(config["sasl.failed_authentication_delay_ms"]) / 1000
        self.iterations = int(config["security.scram_iterations"])
        self.bootstrap_users = parse_bootstrap_users(config["security.bootstrap_users"])
        self.super_users = parse_principals(config["security.super_users"])
        self.reauth_ms = int(config["kafka.connections_max_reauth_ms"])
        self.auth_pool = ThreadPoolExecutor(
            max_workers=int(config["sasl.auth_threads"]),
            thread_name_prefix="streamd-auth",
            initializer=_lower_priority,
        )
        self.authorizer: Authorizer | None = None
        if config["security.authorization"]:
            self.authorizer = Authorizer(
                self.acls,
                super_users=self.super_users,
                allow_if_no_acl=bool(config["allow.everyone.if.no.acl.found"]),
            )

    def open(self) -> None:
        """Load both stores and create missing bootstrap users (blocking: run in a thread)."""
        self.credentials.load()
        self.acls.load()
        missing = [
            u for u in self.bootstrap_users if self.credentials.get(u.name, u.mechanism) is None
        ]
        if missing:
            self.credentials.apply(
                (
                    u.name,
                    ScramCredential.from_password(
                        MECHANISMS[u.mechanism], u.password, self.iterations
                    ),
                )
                for u in missing
            )
            for u in missing:
                log.info("created bootstrap user %s (%s)", u.name, u.mechanism)

    async def run_auth(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one authentication step on the authentication pool."""
        return await asyncio.get_running_loop().run_in_executor(self.auth_pool, fn, *args)

    def close(self) -> None:
        self.auth_pool.shutdown(wait=False, cancel_futures=True)

    def session(self, protocol: str, peer_der: bytes | None = None) -> SaslSession:
        """The authentication state of a new connection on a ``protocol`` listener.

        ``peer_der`` is the verified client certificate, if any; it names the principal on SSL
        listeners only (on SASL_SSL the SASL login does, as in Kafka). Raises ValueError for a
        certificate whose subject cannot be read.
        """
        principal = principal_from_der(peer_der) if protocol == "SSL" else None
        return SaslSession(
            protocol,
            self.mechanisms,
            self.credentials.get,
            ANONYMOUS if principal is None else principal,
            reauth_ms=self.reauth_ms,
        )
