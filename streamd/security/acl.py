"""ACL bindings, filters and the authorizer, with Kafka's semantics and numeric codes.

A binding says: *principal* from *host* is ALLOWed or DENYed *operation* on resources matching
*(resource type, pattern type, name)*. The decision for one request (:meth:`Authorizer.authorize`):

1. super users are allowed everything;
2. the ACLs that apply to the resource are the LITERAL ones with its exact name, the LITERAL
   ones named ``*`` and the PREFIXED ones whose name is a prefix of it;
3. if none apply at all (for any principal), ``allow.everyone.if.no.acl.found`` decides;
4. a DENY for the principal (or ``User:*``), the host (or ``*``) and the operation (or ALL) wins;
5. otherwise an ALLOW is needed; READ, WRITE, DELETE and ALTER imply DESCRIBE, and
   ALTER_CONFIGS implies DESCRIBE_CONFIGS (implication applies to ALLOW only, as in Kafka).

The codes are Kafka's own (they travel on the wire unchanged), so the Kafka front passes them
through without translation. Nothing here does I/O; :class:`streamd.security.store.AclStore`
persists the bindings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Protocol

CLUSTER_NAME = "kafka-cluster"
WILDCARD = "*"
WILDCARD_PRINCIPAL = "User:*"


class ResourceType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class Permission(IntEnum):
    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


_IMPLIED_BY: dict[Operation, frozenset[Operation]] = {
    Operation.DESCRIBE: frozenset(
        {Operation.DESCRIBE, Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER}
    ),
    Operation.DESCRIBE_CONFIGS: frozenset(
        {Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS}
    ),
}


class InvalidAcl(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AclBinding:
    resource_type: ResourceType
    name: str
    pattern_type: PatternType
    principal: str
    host: str
    operation: Operation
    permission: Permission

    def validate(self) -> AclBinding:
        """Reject what Kafka rejects in CreateAcls; returns self for chaining."""
        if self.resource_type in (ResourceType.ANY, ResourceType.UNKNOWN):
            raise InvalidAcl("resource type must be concrete")
        if self.pattern_type not in (PatternType.LITERAL, PatternType.PREFIXED):
            raise InvalidAcl("pattern type must be LITERAL or PREFIXED")
        if self.operation in (Operation.ANY, Operation.UNKNOWN):
            raise InvalidAcl("operation must be concrete")
        if self.permission not in (Permission.ALLOW, Permission.DENY):
            raise InvalidAcl("permission must be ALLOW or DENY")
        if not self.name:
            raise InvalidAcl("resource name must not be empty")
        if self.resource_type == ResourceType.CLUSTER and self.name != CLUSTER_NAME:
            raise InvalidAcl(f"the cluster resource is named {CLUSTER_NAME!r}")
        kind, sep, who = self.principal.partition(":")
        if not sep or not kind or not who:
            raise InvalidAcl(f"principal {self.principal!r} is not of the form Type:name")
        if not self.host:
            raise InvalidAcl("host must be an address or '*'")
        return self

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        for key in ("resource_type", "pattern_type", "operation", "permission"):
            data[key] = data[key].name
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> AclBinding:
        return cls(
            resource_type=ResourceType[str(data["resource_type"])],
            name=str(data["name"]),
            pattern_type=PatternType[str(data["pattern_type"])],
            principal=str(data["principal"]),
            host=str(data["host"]),
            operation=Operation[str(data["operation"])],
            permission=Permission[str(data["permission"])],
        )


@dataclass(frozen=True, slots=True)
class AclFilter:
    """DescribeAcls / DeleteAcls filter; None and the ANY codes match everything."""

    resource_type: ResourceType = ResourceType.ANY
    name: str | None = None
    pattern_type: PatternType = PatternType.ANY
    principal: str | None = None
    host: str | None = None
    operation: Operation = Operation.ANY
    permission: Permission = Permission.ANY

    def matches(self, acl: AclBinding) -> bool:
        if self.resource_type != ResourceType.ANY and acl.resource_type != self.resource_type:
            return False
        if not self._matches_pattern(acl):
            return False
        if self.principal is not None and acl.principal != self.principal:
            return False
        if self.host is not None and acl.host != self.host:
            return False
        if self.operation != Operation.ANY and acl.operation != self.operation:
            return False
        return self.permission == Permission.ANY or acl.permission == self.permission

    def _matches_pattern(self, acl: AclBinding) -> bool:
        pattern = self.pattern_type
        if pattern == PatternType.MATCH:
            if self.name is None:
                return True
            return _applies(acl, self.name)
        if pattern != PatternType.ANY and acl.pattern_type != pattern:
            return False
        return self.name is None or acl.name == self.name


def _applies(acl: AclBinding, name: str) -> bool:
    if acl.pattern_type == PatternType.LITERAL:
        return acl.name == name or acl.name == WILDCARD
    return acl.pattern_type == PatternType.PREFIXED and name.startswith(acl.name)


def _principal_matches(acl: AclBinding, principal: str) -> bool:
    return acl.principal == principal or acl.principal == WILDCARD_PRINCIPAL


def _host_matches(acl: AclBinding, host: str) -> bool:
    return acl.host == WILDCARD or acl.host == host


class AclSource(Protocol):
    """What the authorizer reads: the current bindings of one resource type."""

    def bindings_for(self, resource_type: ResourceType) -> Iterable[AclBinding]: ...


class Authorizer:
    """Decides requests against a live view of the ACLs (``acls`` returns the current list)."""

    def __init__(
        self,
        acls: AclSource,
        *,
        super_users: Iterable[str] = (),
        allow_if_no_acl: bool = False,
    ) -> None:
        self._acls = acls
        self.super_users = frozenset(super_users)
        self.allow_if_no_acl = allow_if_no_acl

    def authorize(
        self,
        principal: str,
        host: str,
        operation: Operation,
        resource_type: ResourceType,
        name: str,
    ) -> bool:
        if principal in self.super_users:
            return True
        applicable = [
            a for a in self._acls.bindings_for(resource_type) if _applies(a, name)
        ]
        if not applicable:
            return self.allow_if_no_acl
        mine = [
            a for a in applicable if _principal_matches(a, principal) and _host_matches(a, host)
        ]
        for acl in mine:
            if acl.permission == Permission.DENY and acl.operation in (operation, Operation.ALL):
                return False
        allowed_by = _IMPLIED_BY.get(operation, frozenset({operation})) | {Operation.ALL}
        return any(a.permission == Permission.ALLOW and a.operation in allowed_by for a in mine)
