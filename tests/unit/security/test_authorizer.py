"""The authorizer against a table of Kafka semantics."""

from __future__ import annotations

import pytest

from streamd.security.acl import (
    AclBinding,
    AclFilter,
    Authorizer,
    InvalidAcl,
    Operation,
    PatternType,
    Permission,
    ResourceType,
)

T, G, C = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
LIT, PRE = PatternType.LITERAL, PatternType.PREFIXED
ALLOW, DENY = Permission.ALLOW, Permission.DENY
Op = Operation


class Acls:
    def __init__(self, *acls: AclBinding) -> None:
        self.acls = acls

    def bindings_for(self, rt: ResourceType) -> list[AclBinding]:
        return [a for a in self.acls if a.resource_type == rt]


def acl(rt, name, pattern, principal, op, perm, host="*"):  # type: ignore[no-untyped-def]
    return AclBinding(rt, name, pattern, principal, host, op, perm)


BASE = (
    acl(T, "orders", LIT, "User:alice", Op.WRITE, ALLOW),
    acl(T, "pay-", PRE, "User:bob", Op.READ, ALLOW),
    acl(T, "*", LIT, "User:carol", Op.DESCRIBE, ALLOW),
    acl(T, "secret", LIT, "User:*", Op.READ, ALLOW),
    acl(T, "secret", LIT, "User:dave", Op.READ, DENY),
    acl(T, "confs", LIT, "User:erin", Op.ALTER_CONFIGS, ALLOW),
    acl(T, "all", LIT, "User:frank", Op.ALL, ALLOW),
    acl(T, "all", LIT, "User:frank", Op.DELETE, DENY),
    acl(T, "lan", LIT, "User:gina", Op.READ, ALLOW, host="10.0.0.1"),
    acl(G, "g1", LIT, "User:bob", Op.READ, ALLOW),
    acl(C, "kafka-cluster", LIT, "User:ops", Op.CREATE, ALLOW),
    acl(T, "pay-", PRE, "User:hank", Op.ALL, DENY),
    acl(T, "pay-ments", LIT, "User:hank", Op.READ, ALLOW),
)

CASES = [
    # principal, op, type, name, expected
    ("User:alice", Op.WRITE, T, "orders", True),
    ("User:alice", Op.DESCRIBE, T, "orders", True),  # implied by WRITE
    ("User:alice", Op.READ, T, "orders", False),
    ("User:alice", Op.WRITE, T, "orders2", False),  # literal is exact
    ("User:bob", Op.READ, T, "pay-ments", True),  # prefixed
    ("User:bob", Op.READ, T, "pay-", True),
    ("User:bob", Op.READ, T, "pa", False),
    ("User:bob", Op.READ, T, "payments", False),
    ("User:bob", Op.WRITE, T, "pay-ments", False),
    ("User:carol", Op.DESCRIBE, T, "anything", True),  # literal wildcard
    ("User:carol", Op.READ, T, "anything", False),  # DESCRIBE implies nothing
    ("User:zed", Op.READ, T, "secret", True),  # User:* allow
    ("User:dave", Op.READ, T, "secret", False),  # deny beats allow
    ("User:dave", Op.DESCRIBE, T, "secret", True),  # deny READ does not deny DESCRIBE
    ("User:erin", Op.DESCRIBE_CONFIGS, T, "confs", True),  # implied by ALTER_CONFIGS
    ("User:erin", Op.ALTER, T, "confs", False),
    ("User:frank", Op.WRITE, T, "all", True),  # ALL
    ("User:frank", Op.DELETE, T, "all", False),  # explicit deny wins over ALL
    ("User:gina", Op.READ, T, "lan", False),  # wrong host (tests use 127.0.0.1)
    ("User:bob", Op.READ, G, "g1", True),
    ("User:bob", Op.READ, G, "g2", False),
    ("User:ops", Op.CREATE, C, "kafka-cluster", True),
    ("User:alice", Op.CREATE, C, "kafka-cluster", False),
    ("User:hank", Op.READ, T, "pay-ments", False),  # prefixed DENY ALL beats literal ALLOW
    ("User:admin", Op.DELETE, T, "secret", True),  # super user
    ("User:admin", Op.ALTER, C, "kafka-cluster", True),
]


@pytest.mark.parametrize(("principal", "op", "rt", "name", "expected"), CASES)
def test_semantics(principal, op, rt, name, expected) -> None:  # type: ignore[no-untyped-def]
    authz = Authorizer(Acls(*BASE), super_users=["User:admin"])
    assert authz.authorize(principal, "127.0.0.1", op, rt, name) is expected


def test_host_match() -> None:
    authz = Authorizer(Acls(*BASE))
    assert authz.authorize("User:gina", "10.0.0.1", Op.READ, T, "lan")


@pytest.mark.parametrize("allow_if_no_acl", [False, True])
def test_no_acl_found(allow_if_no_acl: bool) -> None:
    authz = Authorizer(Acls(*BASE), allow_if_no_acl=allow_if_no_acl)
    # The literal "*" ACL applies to every topic: with it, no topic is without ACLs.
    assert authz.authorize("User:x", "h", Op.WRITE, T, "untouched") is False
    no_wildcard = Authorizer(
        Acls(*(a for a in BASE if a.name != "*")), allow_if_no_acl=allow_if_no_acl
    )
    assert no_wildcard.authorize("User:x", "h", Op.WRITE, T, "untouched") is allow_if_no_acl
    assert authz.authorize("User:x", "h", Op.READ, G, "untouched") is allow_if_no_acl
    # ACLs exist for "orders" (for alice): others are refused even when the flag is on.
    assert authz.authorize("User:x", "h", Op.WRITE, T, "orders") is False


def test_filters() -> None:
    acls = list(BASE)
    match_pay = AclFilter(resource_type=T, name="pay-ments", pattern_type=PatternType.MATCH)
    assert {(a.name, a.principal) for a in acls if match_pay.matches(a)} == {
        ("pay-", "User:bob"),
        ("*", "User:carol"),
        ("pay-", "User:hank"),
        ("pay-ments", "User:hank"),
    }
    exact = AclFilter(resource_type=T, name="pay-", pattern_type=PRE)
    assert len([a for a in acls if exact.matches(a)]) == 2
    anything = AclFilter()
    assert all(anything.matches(a) for a in acls)
    denies = AclFilter(permission=DENY, principal="User:dave")
    assert [a.name for a in acls if denies.matches(a)] == ["secret"]
    by_op = AclFilter(resource_type=ResourceType.ANY, operation=Op.READ, pattern_type=LIT)
    assert {a.name for a in acls if by_op.matches(a)} == {"secret", "lan", "g1", "pay-ments"}


@pytest.mark.parametrize(
    "binding",
    [
        acl(ResourceType.ANY, "x", LIT, "User:a", Op.READ, ALLOW),
        acl(T, "x", PatternType.MATCH, "User:a", Op.READ, ALLOW),
        acl(T, "x", LIT, "User:a", Op.ANY, ALLOW),
        acl(T, "x", LIT, "User:a", Op.READ, Permission.ANY),
        acl(T, "x", LIT, "alice", Op.READ, ALLOW),
        acl(C, "other", LIT, "User:a", Op.ALTER, ALLOW),
        acl(T, "", LIT, "User:a", Op.READ, ALLOW),
    ],
)
def test_invalid_bindings(binding: AclBinding) -> None:
    with pytest.raises(InvalidAcl):
        binding.validate()


def test_json_round_trip() -> None:
    for a in BASE:
        assert AclBinding.from_json(a.to_json()) == a
