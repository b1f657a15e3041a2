"""The audit trail: who did (or tried) what, on the dedicated logger ``streamd.audit``.

One line per event, a JSON object with the same keys every time, so a log shipper can route
the logger to its own file and parse it without patterns:

    {"event": "authorization", "principal": "User:bob", "host": "10.0.0.7",
     "resource": "TOPIC:orders", "operation": "WRITE", "result": "denied"}

Events: ``authentication`` (success or failure, with the mechanism), ``authorization`` (denied
operations at INFO; allowed ones only at DEBUG, since they happen on every request), ``acl``
(ACL bindings created or deleted) and ``user`` (SCRAM credentials upserted or deleted). Secrets
never appear: a user event names the user and the mechanism, not the credential.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("streamd.audit")


def record(
    event: str,
    *,
    principal: str,
    host: str,
    resource: str,
    operation: str,
    result: str,
    level: int,
    **detail: object,
) -> None:
    if not log.isEnabledFor(level):
        return
    entry = {
        "event": event,
        "principal": principal,
        "host": host,
        "resource": resource,
        "operation": operation,
        "result": result,
        **detail,
    }
    log.log(level, "%s", json.dumps(entry, separators=(", ", ": "), default=str))


def authentication(
    principal: str, host: str, mechanism: str | None, ok: bool, reason: str = ""
) -> None:
    extra = {"reason": reason} if reason else {}
    record(
        "authentication",
        principal=principal,
        host=host,
        resource="CLUSTER:kafka-cluster",
        operation=f"SASL {mechanism or '?'}",
        result="success" if ok else "failure",
        level=logging.INFO,
        **extra,
    )


def authorization(
    principal: str, host: str, operation: str, resource_type: str, name: str, allowed: bool
) -> None:
    record(
        "authorization",
        principal=principal,
        host=host,
        resource=f"{resource_type}:{name}",
        operation=operation,
        result="allowed" if allowed else "denied",
        level=logging.DEBUG if allowed else logging.INFO,
    )


def change(
    event: str, principal: str, host: str, resource: str, operation: str, result: str,
    **detail: object,
) -> None:
    """An ACL or user change (``event`` is ``acl`` or ``user``), applied or refused."""
    record(
        event, principal=principal, host=host, resource=resource, operation=operation,
        result=result, level=logging.INFO, **detail,
    )
