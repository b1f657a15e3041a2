"""Credential and ACL stores: durable, atomic, hashed only."""

from __future__ import annotations

import json
from pathlib import Path

from streamd.config import KEYS
from streamd.security.acl import AclBinding, AclFilter, Operation, PatternType, Permission
from streamd.security.acl import ResourceType as RT
from streamd.security.scram import SHA256, SHA512, ScramCredential
from streamd.security.service import SecurityService, parse_bootstrap_users
from streamd.security.store import AclStore, CredentialStore


def config(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {key.name: key.default for key in KEYS}
    base |= {
        "sasl.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
        "sasl.failed_authentication_delay_ms": 100,
        "security.scram_iterations": 4096,
        "security.bootstrap_users": "admin:s3:cr:et:SCRAM-SHA-256,admin:other:SCRAM-SHA-512",
        "security.super_users": "User:admin",
        "security.authorization": True,
        "allow.everyone.if.no.acl.found": False,
    }
    base.update(extra)
    return base


def test_credentials_persist_without_plaintext(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    store.load()
    store.apply([("alice", ScramCredential.from_password(SHA256, "hunter2-password"))])
    store.apply([("alice", ScramCredential.from_password(SHA512, "hunter2-password"))])
    raw = (tmp_path / "credentials.json").read_text()
    assert "hunter2" not in raw
    assert (tmp_path / "credentials.json").stat().st_mode & 0o077 == 0
    again = CredentialStore(tmp_path)
    again.load()
    assert again.get("alice", SHA256.name) == store.get("alice", SHA256.name)
    assert again.get("alice", SHA256.name).verify_password("hunter2-password")  # type: ignore[union-attr]
    assert again.credentials() == store.credentials()
    again.apply(deletions=[("alice", SHA256.name), ("alice", SHA512.name)])
    assert again.users() == {}
    assert not list(tmp_path.glob("*.tmp"))


def test_acls_persist_and_delete_by_filter(tmp_path: Path) -> None:
    store = AclStore(tmp_path)
    store.load()
    a = AclBinding(RT.TOPIC, "pay-", PatternType.PREFIXED, "User:b", "*", Operation.READ,
                   Permission.ALLOW)
    b = AclBinding(RT.GROUP, "g", PatternType.LITERAL, "User:b", "*", Operation.READ,
                   Permission.ALLOW)
    store.add([a, b, a])
    again = AclStore(tmp_path)
    again.load()
    assert again.all() == (a, b)
    assert again.acls()["acls"][0]["operation"] == "READ"
    matched = again.delete([AclFilter(resource_type=RT.GROUP)])
    assert matched == [[b]]
    third = AclStore(tmp_path)
    third.load()
    assert third.all() == (a,)
    assert json.loads((tmp_path / "acls.json").read_text())["version"] == 1


def test_bootstrap_users_created_once(tmp_path: Path) -> None:
    users = parse_bootstrap_users(config()["security.bootstrap_users"])  # type: ignore[arg-type]
    assert [(u.name, u.password, u.mechanism) for u in users] == [
        ("admin", "s3:cr:et", "SCRAM-SHA-256"),
        ("admin", "other", "SCRAM-SHA-512"),
    ]
    assert "s3:cr:et" not in repr(users)
    svc = SecurityService(tmp_path, config())
    svc.open()
    first = svc.credentials.get("admin", SHA256.name)
    assert first is not None and first.verify_password("s3:cr:et")
    assert "s3:cr:et" not in (tmp_path / "security" / "credentials.json").read_text()
    svc2 = SecurityService(tmp_path, config())
    svc2.open()
    assert svc2.credentials.get("admin", SHA256.name) == first
    assert svc2.authorizer is not None
    assert SecurityService(tmp_path, config(**{"security.authorization": False})).authorizer is None


def test_principal_lists_keep_certificate_principals() -> None:
    from streamd.config import load
    from streamd.security.service import parse_principals

    assert parse_principals("User:admin,User:bob") == ("User:admin", "User:bob")
    assert parse_principals("User:CN=admin,O=acme;User:bob") == ("User:CN=admin,O=acme", "User:bob")
    assert parse_principals("User:CN=admin,O=acme, User:bob") == (
        "User:CN=admin,O=acme", "User:bob"
    )
    cfg = load(overrides=["security.super_users=User:CN=admin,O=acme;User:bob"], environ={})
    assert parse_principals(cfg["security.super_users"]) == ("User:CN=admin,O=acme", "User:bob")
