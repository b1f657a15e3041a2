"""Durable security metadata: SCRAM credentials and ACL bindings under ``data_dir/security/``.

Each store is one small versioned JSON document (``credentials.json``, ``acls.json``), written
whole on every change: temporary file, fsync, atomic rename, fsync of the directory. A crash
therefore leaves either the old or the new document, never a torn one. Changes are rare admin
operations, so whole-file rewrites are cheap; callers run them off the event loop.

Credentials hold only salt, iteration count, StoredKey and ServerKey (base64): no password and
no salted password is ever written or logged. ``credentials()`` and ``acls()`` return exactly
what is stored, for the archive / restore of cluster metadata; ``replace_all`` loads it back.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streamd.security.acl import AclBinding, AclFilter, ResourceType
from streamd.security.scram import ScramCredential

FORMAT_VERSION = 1


def _write_atomic(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(document, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read(path: Path, kind: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {"version": FORMAT_VERSION, kind: {} if kind == "users" else []}
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format version {document.get('version')!r}")
    return dict(document)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def credential_to_json(c: ScramCredential) -> dict[str, Any]:
    return {
        "salt": _b64(c.salt),
        "iterations": c.iterations,
        "stored_key": _b64(c.stored_key),
        "server_key": _b64(c.server_key),
    }


def credential_from_json(mechanism: str, data: dict[str, Any]) -> ScramCredential:
    return ScramCredential(
        mechanism=mechanism,
        salt=base64.b64decode(data["salt"]),
        iterations=int(data["iterations"]),
        stored_key=base64.b64decode(data["stored_key"]),
        server_key=base64.b64decode(data["server_key"]),
    )


class CredentialStore:
    """user -> mechanism -> credential; reads are lock-free snapshots of an immutable dict."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "credentials.json"
        self._lock = threading.Lock()
        self._users: dict[str, dict[str, ScramCredential]] = {}

    def load(self) -> None:
        users = _read(self.path, "users")["users"]
        self._users = {
            user: {m: credential_from_json(m, c) for m, c in mechs.items()}
            for user, mechs in users.items()
        }

    def get(self, user: str, mechanism: str) -> ScramCredential | None:
        return self._users.get(user, {}).get(mechanism)

    def users(self) -> dict[str, dict[str, ScramCredential]]:
        return self._users

    def credentials(self) -> dict[str, Any]:
        """The stored document (salted and hashed only), for archive and restore."""
        return {
            "version": FORMAT_VERSION,
            "users": {
                user: {m: credential_to_json(c) for m, c in sorted(mechs.items())}
                for user, mechs in sorted(self._users.items())
            },
        }

    def replace_all(self, document: dict[str, Any]) -> None:
        with self._lock:
            users = {
                user: {m: credential_from_json(m, c) for m, c in mechs.items()}
                for user, mechs in document["users"].items()
            }
            self._commit(users)

    def apply(
        self,
        upserts: Iterable[tuple[str, ScramCredential]] = (),
        deletions: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Upsert ``(user, credential)`` and delete ``(user, mechanism)`` in one durable write."""
        with self._lock:
            users = {u: dict(m) for u, m in self._users.items()}
            for user, mechanism in deletions:
                mechs = users.get(user, {})
                mechs.pop(mechanism, None)
                if not mechs:
                    users.pop(user, None)
            for user, credential in upserts:
                users.setdefault(user, {})[credential.mechanism] = credential
            self._commit(users)

    def _commit(self, users: dict[str, dict[str, ScramCredential]]) -> None:
        previous = self._users
        self._users = users
        try:
            _write_atomic(self.path, self.credentials())
        except BaseException:
            self._users = previous
            raise


class AclStore:
    """The ACL bindings, indexed by resource type for the authorizer's hot path."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "acls.json"
        self._lock = threading.Lock()
        self._acls: tuple[AclBinding, ...] = ()
        self._by_type: dict[ResourceType, tuple[AclBinding, ...]] = {}

    def load(self) -> None:
        self._set(tuple(AclBinding.from_json(a) for a in _read(self.path, "acls")["acls"]))

    def _set(self, acls: tuple[AclBinding, ...]) -> None:
        by_type: dict[ResourceType, list[AclBinding]] = {}
        for acl in acls:
            by_type.setdefault(acl.resource_type, []).append(acl)
        self._acls = acls
        self._by_type = {k: tuple(v) for k, v in by_type.items()}

    def bindings_for(self, resource_type: ResourceType) -> tuple[AclBinding, ...]:
        return self._by_type.get(resource_type, ())

    def all(self) -> tuple[AclBinding, ...]:
        return self._acls

    def acls(self) -> dict[str, Any]:
        """The stored document, for archive and restore."""
        return {"version": FORMAT_VERSION, "acls": [a.to_json() for a in self._acls]}

    def replace_all(self, document: dict[str, Any]) -> None:
        with self._lock:
            self._commit(tuple(AclBinding.from_json(a) for a in document["acls"]))

    def find(self, flt: AclFilter) -> list[AclBinding]:
        return [a for a in self._acls if flt.matches(a)]

    def add(self, bindings: Iterable[AclBinding]) -> None:
        with self._lock:
            current = list(self._acls)
            for b in bindings:
                if b not in current:
                    current.append(b)
            self._commit(tuple(current))

    def delete(self, filters: Iterable[AclFilter]) -> list[list[AclBinding]]:
        """Remove every binding matching each filter; returns the matches per filter."""
        with self._lock:
            matched = [[a for a in self._acls if f.matches(a)] for f in filters]
            gone = {a for group in matched for a in group}
            if gone:
                self._commit(tuple(a for a in self._acls if a not in gone))
            return matched

    def _commit(self, acls: tuple[AclBinding, ...]) -> None:
        previous = self._acls
        self._set(acls)
        try:
            _write_atomic(self.path, self.acls())
        except BaseException:
            self._set(previous)
            raise
