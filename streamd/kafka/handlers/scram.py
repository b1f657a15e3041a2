"""DescribeUserScramCredentials and AlterUserScramCredentials (KIP-554).

Describing needs DESCRIBE on the cluster, altering ALTER on the cluster. A refused describe
carries CLUSTER_AUTHORIZATION_FAILED with Kafka's message ("Cluster authorization failed.") on
one result per requested user (one result with an empty name when all users were asked for), and
no request-level error. Kafka puts the error at the request level too, but librdkafka (since its
KIP-554 support, 2.2.0) frees a request-level error string it never allocated (a stack copy, or
the static text when the message is null), so such an answer aborts every confluent-kafka client
(``streamd user list`` as a non-admin crashed). Per-user errors are what both librdkafka and
Kafka's own AdminClient surface as the refusal (``all()`` and ``description(user)`` fail with
ClusterAuthorizationException). Clients send the salted password (never the password); the
broker keeps only StoredKey and ServerKey derived from it. Errors are per user and atomic per
user: if any change for a user is invalid, none of that user's changes is applied. Iterations
must lie in [4096, 16384] (Kafka's bounds). Every change, applied or refused, is recorded on the
audit logger (user and mechanism, never the credential).
"""

from __future__ import annotations

import asyncio
from typing import Any

from streamd.errors import ErrorCode
from streamd.kafka.apis import api
from streamd.kafka.authz import ALTER, DESCRIBE, authorize_cluster, client_host
from streamd.kafka.context import Request
from streamd.security import audit
from streamd.security.scram import BY_CODE, MAX_ITERATIONS, MIN_ITERATIONS, ScramCredential

E = ErrorCode
CLUSTER_AUTHORIZATION_FAILED = "Cluster authorization failed."
"""Kafka's message for the error (``ClusterAuthorizationException``'s default)."""


@api(50, "DescribeUserScramCredentials", 0, 0)
async def describe_user_scram_credentials(req: Request) -> dict[str, Any]:
    security = req.ctx.security
    if security is None or not authorize_cluster(req, DESCRIBE):
        refused = {"error_code": E.CLUSTER_AUTHORIZATION_FAILED,
                   "error_message": CLUSTER_AUTHORIZATION_FAILED}
        names = [u.name for u in req.body.users] if req.body.users else [""]
        return {"error_code": E.NONE, "error_message": None,
                "results": [{"user": n, **refused} for n in names]}
    users = security.credentials.users()
    wanted = [u.name for u in req.body.users] if req.body.users else sorted(users)
    results = []
    seen: set[str] = set()
    for name in wanted:
        entry: dict[str, Any] = {"user": name, "error_code": E.NONE, "error_message": None}
        results.append(entry)
        if name in seen:
            entry.update(error_code=E.DUPLICATE_RESOURCE, error_message="user listed twice")
            continue
        seen.add(name)
        mechs = users.get(name)
        if not mechs:
            entry.update(error_code=E.RESOURCE_NOT_FOUND, error_message="no such user")
            continue
        entry["credential_infos"] = [
            {"mechanism": _code(m), "iterations": c.iterations} for m, c in sorted(mechs.items())
        ]
    return {"error_code": E.NONE, "error_message": None, "results": results}


def _code(mechanism: str) -> int:
    return next(code for code, m in BY_CODE.items() if m.name == mechanism)


@api(51, "AlterUserScramCredentials", 0, 0)
async def alter_user_scram_credentials(req: Request) -> dict[str, Any]:
    body = req.body
    security = req.ctx.security
    named = [*(d.name for d in body.deletions), *(u.name for u in body.upsertions)]
    names = list(dict.fromkeys(named))
    if security is None or not authorize_cluster(req, ALTER):
        return {
            "results": [
                {"user": n, "error_code": E.CLUSTER_AUTHORIZATION_FAILED,
                 "error_message": CLUSTER_AUTHORIZATION_FAILED}
                for n in names
            ]
        }
    errors: dict[str, tuple[ErrorCode, str]] = {}
    changes: dict[str, list[tuple[str, int]]] = {}

    def fail(name: str, code: ErrorCode, message: str) -> None:
        errors.setdefault(name, (code, message))

    for d in body.deletions:
        changes.setdefault(d.name, []).append(("delete", d.mechanism))
    for u in body.upsertions:
        changes.setdefault(u.name, []).append(("upsert", u.mechanism))
    for name, ops in changes.items():
        mechs = [m for _, m in ops]
        if len(set(mechs)) != len(mechs):
            fail(name, E.DUPLICATE_RESOURCE, "a mechanism appears twice for this user")
        if not name:
            fail(name, E.UNACCEPTABLE_CREDENTIAL, "empty user name")
        for _, m in ops:
            if m not in BY_CODE:
                fail(name, E.UNSUPPORTED_SASL_MECHANISM, f"unknown SCRAM mechanism {m}")
    for d in body.deletions:
        mech = BY_CODE.get(d.mechanism)
        if mech is not None and security.credentials.get(d.name, mech.name) is None:
            fail(d.name, E.RESOURCE_NOT_FOUND, "no such credential to delete")
    upserts, deletions = [], []
    for u in body.upsertions:
        if not MIN_ITERATIONS <= u.iterations <= MAX_ITERATIONS:
            fail(u.name, E.UNACCEPTABLE_CREDENTIAL, f"iterations must be in [{MIN_ITERATIONS}, "
                 f"{MAX_ITERATIONS}]")
        elif not u.salt or not u.salted_password:
            fail(u.name, E.UNACCEPTABLE_CREDENTIAL, "salt and salted password are required")
        elif u.name not in errors and u.mechanism in BY_CODE:
            mech = BY_CODE[u.mechanism]
            cred = ScramCredential.from_salted_password(
                mech, bytes(u.salted_password), bytes(u.salt), u.iterations
            )
            upserts.append((u.name, cred))
    for d in body.deletions:
        if d.name not in errors:
            deletions.append((d.name, BY_CODE[d.mechanism].name))
    upserts = [(n, c) for n, c in upserts if n not in errors]
    if upserts or deletions:
        try:
            await asyncio.to_thread(security.credentials.apply, upserts, deletions)
        except OSError as exc:
            for n in names:
                fail(n, E.KAFKA_STORAGE_ERROR, str(exc))
    host = client_host(req.peer)
    for name, ops in changes.items():
        for op, code in ops:
            mech = BY_CODE.get(code)
            audit.change(
                "user", req.principal, host, f"USER:{name}", f"{op} credential",
                "refused" if name in errors else "applied",
                mechanism=mech.name if mech else str(code),
                **({"reason": errors[name][1]} if name in errors else {}),
            )
    return {
        "results": [
            {
                "user": n,
                "error_code": errors[n][0] if n in errors else E.NONE,
                "error_message": errors[n][1] if n in errors else None,
            }
            for n in names
        ]
    }
