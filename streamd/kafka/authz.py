"""Authorization checks for handlers: one call per (operation, resource), Kafka's semantics.

``ctx.authorizer`` is None unless ``security.authorization`` is on; then every check passes
without touching the ACLs, so the PLAINTEXT default costs one attribute lookup per check.
Handlers answer a refused check with TOPIC_/GROUP_/CLUSTER_AUTHORIZATION_FAILED; for topics a
principal may not DESCRIBE they answer TOPIC_AUTHORIZATION_FAILED whether or not the topic
exists, so existence does not leak.

A refused check is recorded on the audit logger (``streamd.audit``), except where a listing is
only being filtered (``audit=False``: Metadata for all topics, ListGroups), as Kafka's
authorizer does with ``logIfDenied=false``.
"""

from __future__ import annotations

from collections.abc import Iterable

from streamd.kafka.context import Request
from streamd.security import audit as audit_log
from streamd.security.acl import CLUSTER_NAME, Operation, ResourceType

READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE = (
    Operation.READ,
    Operation.WRITE,
    Operation.CREATE,
    Operation.DELETE,
    Operation.ALTER,
    Operation.DESCRIBE,
)
DESCRIBE_CONFIGS, ALTER_CONFIGS = Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS
IDEMPOTENT_WRITE = Operation.IDEMPOTENT_WRITE
TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID = (
    ResourceType.TOPIC,
    ResourceType.GROUP,
    ResourceType.CLUSTER,
    ResourceType.TRANSACTIONAL_ID,
)


def client_host(peer: str) -> str:
    """The address ACL host fields are matched against ("ip:port" -> "ip")."""
    host = peer.rpartition(":")[0] if ":" in peer else peer
    return host.strip("[]")


def authorize(
    req: Request,
    operation: Operation,
    resource_type: ResourceType,
    name: str = CLUSTER_NAME,
    *,
    audit: bool = True,
) -> bool:
    authorizer = req.ctx.authorizer
    if authorizer is None:
        return True
    host = client_host(req.peer)
    allowed = bool(authorizer.authorize(req.principal, host, operation, resource_type, name))
    if audit:
        audit_log.authorization(
            req.principal, host, operation.name, resource_type.name, name, allowed
        )
    return allowed


def authorize_cluster(req: Request, operation: Operation, *, audit: bool = True) -> bool:
    return authorize(req, operation, CLUSTER, CLUSTER_NAME, audit=audit)


def filter_authorized(
    req: Request, operation: Operation, resource_type: ResourceType, names: Iterable[str]
) -> list[str]:
    """The names the principal may perform ``operation`` on, in their original order."""
    if req.ctx.authorizer is None:
        return list(names)
    return [n for n in names if authorize(req, operation, resource_type, n, audit=False)]


def may_create_topic(req: Request, name: str) -> bool:
    """CREATE on the cluster or on the topic itself (Kafka accepts either)."""
    return authorize_cluster(req, CREATE) or authorize(req, CREATE, TOPIC, name)


SUPPORTED_OPERATIONS: dict[ResourceType, tuple[Operation, ...]] = {
    TOPIC: (
        Operation.READ,
        Operation.WRITE,
        Operation.CREATE,
        Operation.DESCRIBE,
        Operation.DELETE,
        Operation.ALTER,
        Operation.DESCRIBE_CONFIGS,
        Operation.ALTER_CONFIGS,
    ),
    GROUP: (Operation.READ, Operation.DESCRIBE, Operation.DELETE),
    CLUSTER: (
        Operation.CREATE,
        Operation.CLUSTER_ACTION,
        Operation.DESCRIBE_CONFIGS,
        Operation.ALTER_CONFIGS,
        Operation.IDEMPOTENT_WRITE,
        Operation.ALTER,
        Operation.DESCRIBE,
    ),
    TRANSACTIONAL_ID: (Operation.DESCRIBE, Operation.WRITE),
}
"""Kafka's ``AclEntry.supportedOperations`` per resource type."""

NOT_REQUESTED = -(2**31)
"""The authorized-operations field of a response when the request did not ask for it."""


def authorized_operations(req: Request, resource_type: ResourceType, name: str) -> int:
    """Kafka's bitfield (bit ``code`` set per allowed operation) of the operations the
    principal may perform on the resource; every supported one when authorization is off."""
    bits = 0
    for operation in SUPPORTED_OPERATIONS[resource_type]:
        if authorize(req, operation, resource_type, name):
            bits |= 1 << int(operation)
    return bits
