"""The one object-store interface of streamd, its errors and the factory that picks a backend.

Every remote object streamd writes goes through :class:`ObjectStore`. Two backends exist:

* ``file:///abs/dir`` -> :class:`streamd.tiering.local_store.LocalStore`, the embedded default;
* ``s3://bucket[/prefix]`` -> :class:`streamd.tiering.s3_store.S3Store` (aiobotocore, and the
  only module that imports it).

Contract shared by both (checked by ``tests/unit/tiering/test_store_contract.py``):

* Keys are ``/``-separated relative paths; ``..``, ``.`` and empty components, absolute keys and
  backslashes are rejected with :class:`InvalidKey` before any I/O.
* ``put`` replaces the whole object atomically: a reader sees the old bytes or the new bytes,
  never a mix. Every object is stamped with the CRC32C of its bytes in the user metadata key
  ``streamd-crc32c`` (``x-amz-meta-streamd-crc32c`` on S3); ``get`` of a whole object verifies it
  and raises :class:`streamd.errors.RemoteStorageError` on mismatch (invariant 6). Ranged reads
  cannot be verified against the whole-object checksum; their callers verify what they read
  (batch CRCs, index checksums from the manifest).
* ``put(..., if_absent=True)`` (and ``put_file``/``put_files``) raises :class:`ObjectExists`
  when the key already exists and leaves the object as it was (invariant 9: segment and index
  objects are only ever written this way).
* ``put_files(key, [(fd, size), ...])`` stores the concatenation of the first ``size`` bytes of
  each file (adjacent segments merged into one object), reading in bounded pieces.
* ``get(key, byte_range=(start, end))`` returns ``data[start:end]`` (end exclusive), shorter when
  the object ends before ``end``; an empty range returns ``b""``; ``start`` past the end of a
  non-empty object raises :class:`RangeNotSatisfiable`.
* Missing keys raise :class:`ObjectNotFound` from ``get``; ``head`` returns ``None``;
  ``delete``/``delete_many`` of a missing key is a no-op (S3 semantics).
* ``list(prefix)`` yields every object whose key starts with the string ``prefix`` (not only a
  directory), in ascending key order.
* Misconfiguration (missing bucket, bad credentials, access denied) raises
  :class:`StoreAccessError` at once, naming the bucket and endpoint; transient failures are
  retried inside the backend and surface as :class:`RemoteStorageError` with ``retriable=True``.
* ``requests`` counts the requests sent, by verb (``PUT``, ``GET``, ``HEAD``, ``LIST``,
  ``DELETE``; every attempt and every part of a multipart upload counts): the bucket bill, and
  what ``/metrics`` and the benchmark report per GB archived and replayed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from streamd.errors import ConfigError, RemoteStorageError, StorageError
from streamd.log import files

CHECKSUM_METADATA_KEY = "streamd-crc32c"
VERBS = ("PUT", "GET", "HEAD", "LIST", "DELETE")

_BAD_KEY_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class StoreError(RemoteStorageError):
    """Base of the object-store errors; ``retriable`` says whether trying again may help."""

    retriable: bool = False

    def __init__(self, message: str = "", *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ObjectNotFound(StoreError):
    """The key does not exist in the store."""


class ObjectExists(StoreError):
    """A put-if-absent found the key already present."""


class RangeNotSatisfiable(StoreError):
    """A ranged read started past the end of the object."""


class InvalidKey(StoreError):
    """A key that could escape the store root or is otherwise malformed."""


class StoreAccessError(StoreError):
    """The store cannot be used at all: missing bucket/directory, bad credentials, denied."""


@dataclass(frozen=True, kw_only=True)
class ObjectInfo:
    """What ``head``/``list`` know about an object. ``metadata`` is the user metadata."""

    key: str
    size: int
    etag: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def crc32c(self) -> str | None:
        return self.metadata.get(CHECKSUM_METADATA_KEY)


@runtime_checkable
class ObjectStore(Protocol):
    """Async object store; see the module docstring for the contract."""

    @property
    def description(self) -> str:
        """Human-readable location (URL) for error messages and logs."""
        ...

    async def check(self) -> None:
        """Verify the store is reachable and usable; raise :class:`StoreAccessError` if not."""
        ...

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None: ...

    async def put_file(
        self,
        key: str,
        fd: int,
        size: int,
        *,
        checksum: str,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Store the first ``size`` bytes of file ``fd`` whose CRC32C is ``checksum``, reading
        it in bounded pieces; refuse (StoreError) if the bytes read do not match."""
        ...

    async def put_files(
        self,
        key: str,
        files: Sequence[tuple[int, int]],
        *,
        checksum: str,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """:meth:`put_file` of the concatenation of several files' first bytes."""
        ...

    @property
    def requests(self) -> Counter[str]:
        """Requests sent so far, by verb."""
        ...

    async def get(self, key: str, *, byte_range: tuple[int, int] | None = None) -> bytes: ...

    async def head(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]: ...

    async def delete(self, key: str) -> None: ...

    async def delete_many(self, keys: Iterable[str]) -> None: ...

    async def close(self) -> None: ...


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise :class:`InvalidKey`."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid object key {key!r}: empty")
    if key.startswith("/") or _BAD_KEY_CHARS.search(key):
        raise InvalidKey(f"invalid object key {key!r}: absolute or contains control/backslash")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKey(f"invalid object key {key!r}: empty, '.' or '..' component")
    return key


def validate_range(byte_range: tuple[int, int]) -> tuple[int, int]:
    start, end = byte_range
    if start < 0 or end < start:
        raise ValueError(f"invalid byte range [{start}, {end})")
    return start, end


def pread_exactly(fd: int, length: int, position: int) -> bytes:
    """``length`` bytes of file ``fd`` at ``position`` (StoreError if the file is shorter)."""
    try:
        return files.pread_exactly(fd, length, position, "the file to upload")
    except StorageError as exc:
        raise StoreError(str(exc)) from exc


def pread_files(files: Sequence[tuple[int, int]], length: int, position: int) -> bytes:
    """``length`` bytes at ``position`` of the concatenation of ``(fd, size)`` files."""
    parts = []
    origin = 0
    end = position + length
    for fd, size in files:
        lo, hi = max(position, origin), min(end, origin + size)
        if lo < hi:
            parts.append(pread_exactly(fd, hi - lo, lo - origin))
        origin += size
        if origin >= end:
            break
    data = b"".join(parts)
    if len(data) != length:
        raise StoreError(f"the files to upload hold {origin} bytes, not {end}")
    return data


def normalize_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Lower-case user metadata keys (S3 does so on the wire) and check they are ASCII."""
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if not name.isascii() or not str(value).isascii():
            raise ValueError(f"object metadata must be ASCII: {name!r}={value!r}")
        out[name.lower()] = str(value)
    return out


def open_store(url: str, *, s3_options: Mapping[str, Any] | None = None) -> ObjectStore:
    """Build the store named by ``url`` (``file:///abs/dir`` or ``s3://bucket[/prefix]``).

    ``s3_options`` are keyword arguments of :class:`streamd.tiering.s3_store.S3Options`
    (``endpoint_url``, ``region``, ``access_key_id``, ``secret_access_key``, retry settings...);
    they are rejected for ``file://`` URLs only if they name unknown settings.
    Raises :class:`streamd.errors.ConfigError` naming ``tiering.store`` on a malformed URL.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ConfigError(f"tiering.store: file URL must be file:///absolute/dir, got {url!r}")
        from streamd.tiering.local_store import LocalStore

        return LocalStore(parsed.path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"tiering.store: s3 URL must be s3://bucket[/prefix], got {url!r}")
        if parsed.query or parsed.fragment:
            raise ConfigError(f"tiering.store: s3 URL takes no query or fragment: {url!r}")
        from streamd.tiering.s3_store import S3Options, S3Store

        try:
            options = S3Options(**dict(s3_options or {}))
        except TypeError as exc:
            raise ConfigError(f"tiering.s3: {exc}") from exc
        return S3Store(parsed.netloc, prefix=parsed.path.strip("/"), options=options)
    raise ConfigError(f"tiering.store: unsupported URL scheme in {url!r} (use file:// or s3://)")
