"""Object store in a local directory: the embedded default (``file:///abs/dir``).

Each key maps to the file ``<root>/<key>`` (``/`` in a key makes subdirectories). A file holds a
small header followed by the object bytes, so that data and user metadata (the CRC32C stamp) are
replaced together by a single rename::

    b"SDOBJ1" | u32 big-endian header length | header JSON {"metadata": {...}} | object bytes

Writes go to a temporary file under ``<root>/.streamd-tmp`` (same filesystem), are fsynced, then
renamed over the key (or hard-linked for put-if-absent, which fails if the key exists) and the
parent directory is fsynced. Keys whose first component is ``.streamd-tmp`` are refused. Emptied
directories are pruned on delete. All blocking file I/O runs in a worker thread.

A key cannot be both an object and a "directory" of other keys here (S3 allows it); streamd's key
layout (:mod:`streamd.tiering.keys`) never needs that.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import struct
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from streamd.log.files import fsync_dir
from streamd.tiering.checksum import crc32c, crc32c_hex, verify
from streamd.tiering.store import (
    CHECKSUM_METADATA_KEY,
    InvalidKey,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    RangeNotSatisfiable,
    StoreAccessError,
    StoreError,
    normalize_metadata,
    pread_files,
    validate_key,
    validate_range,
)

_MAGIC = b"SDOBJ1"
COPY_BLOCK = 16 << 20
_LEN = struct.Struct(">I")
_TMP_DIR = ".streamd-tmp"
_MAX_HEADER = 1 << 20
_NOT_FOUND = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class LocalStore:
    """:class:`streamd.tiering.store.ObjectStore` over a directory tree."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self._root = Path(root)
        if not self._root.is_absolute():
            raise ValueError(f"local store root must be absolute: {root}")
        self._fsync = fsync
        self.requests: Counter[str] = Counter()

    @property
    def description(self) -> str:
        return f"file://{self._root}"

    @property
    def root(self) -> Path:
        return self._root

    async def check(self) -> None:
        self.requests["HEAD"] += 1
        await asyncio.to_thread(self._check)

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        path = self._path(key)
        meta = normalize_metadata(metadata)
        meta[CHECKSUM_METADATA_KEY] = crc32c_hex(data)
        self.requests["PUT"] += 1
        await asyncio.to_thread(self._put, key, path, bytes(data), if_absent, meta)

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
        await self.put_files(
            key, [(fd, size)], checksum=checksum, if_absent=if_absent, metadata=metadata
        )

    async def put_files(
        self,
        key: str,
        files: Sequence[tuple[int, int]],
        *,
        checksum: str,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Store the concatenated files (whose CRC32C is ``checksum``), copying them in
        blocks: memory stays bounded whatever the size."""
        path = self._path(key)
        meta = normalize_metadata(metadata)
        meta[CHECKSUM_METADATA_KEY] = checksum
        self.requests["PUT"] += 1
        await asyncio.to_thread(self._put_files, key, path, list(files), if_absent, meta)

    async def get(self, key: str, *, byte_range: tuple[int, int] | None = None) -> bytes:
        self.requests["GET"] += 1
        path = self._path(key)
        if byte_range is not None:
            byte_range = validate_range(byte_range)
        return await asyncio.to_thread(self._get, key, path, byte_range)

    async def head(self, key: str) -> ObjectInfo | None:
        self.requests["HEAD"] += 1
        path = self._path(key)
        return await asyncio.to_thread(self._head, key, path)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        self.requests["LIST"] += 1
        for info in await asyncio.to_thread(self._list, prefix):
            yield info

    async def delete(self, key: str) -> None:
        self.requests["DELETE"] += 1
        path = self._path(key)
        await asyncio.to_thread(self._delete, path)

    async def delete_many(self, keys: Iterable[str]) -> None:
        paths = [self._path(key) for key in keys]
        self.requests["DELETE"] += 1
        await asyncio.to_thread(self._delete_all, paths)

    async def close(self) -> None:
        return None

    def _path(self, key: str) -> Path:
        validate_key(key)
        if key.split("/", 1)[0] == _TMP_DIR:
            raise InvalidKey(f"invalid object key {key!r}: {_TMP_DIR} is reserved")
        return self._root.joinpath(*key.split("/"))

    def _check(self) -> None:
        try:
            (self._root / _TMP_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreAccessError(f"local object store {self._root} is unusable: {exc}") from exc
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise StoreAccessError(f"local object store {self._root} is not writable")

    def _put(
        self, key: str, path: Path, data: bytes, if_absent: bool, meta: dict[str, str]
    ) -> None:
        self._write_object(key, path, lambda f: f.write(data), if_absent, meta)

    def _put_files(
        self,
        key: str,
        path: Path,
        files: builtins.list[tuple[int, int]],
        if_absent: bool,
        meta: dict[str, str],
    ) -> None:
        size = sum(n for _, n in files)

        def copy(f: BinaryIO) -> None:
            crc = 0
            for offset in range(0, size, COPY_BLOCK):
                data = pread_files(files, min(COPY_BLOCK, size - offset), offset)
                crc = crc32c(data, crc)
                f.write(data)
            if format(crc, "08x") != meta[CHECKSUM_METADATA_KEY]:
                raise StoreError(f"put {key!r}: the source changed while it was copied")

        if if_absent and path.exists():
            raise ObjectExists(f"object {key!r} already exists in {self.description}")
        self._write_object(key, path, copy, if_absent, meta)

    def _write_object(
        self,
        key: str,
        path: Path,
        write_body: Callable[[BinaryIO], object],
        if_absent: bool,
        meta: dict[str, str],
    ) -> None:
        """Header + body into a temporary file (fsynced), then published at ``path``."""
        header = json.dumps({"metadata": meta}, sort_keys=True).encode()
        tmp_dir = self._root / _TMP_DIR
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="put-")
        except OSError as exc:
            raise StoreAccessError(
                f"cannot write to local object store {self._root}: {exc}"
            ) from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + _LEN.pack(len(header)) + header)
                write_body(f)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
            self._publish(key, tmp_name, path, if_absent)
        except OSError as exc:
            raise StoreError(f"put {key!r} into {self.description} failed: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)

    def _publish(self, key: str, tmp_name: str, path: Path, if_absent: bool) -> None:
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                if if_absent:
                    os.link(tmp_name, path)
                else:
                    os.replace(tmp_name, path)
                break
            except FileExistsError as exc:
                raise ObjectExists(f"object {key!r} already exists in {self.description}") from exc
            except FileNotFoundError:
                if attempt == 2:
                    raise  # a concurrent delete kept pruning the parent directory
        if self._fsync:
            fsync_dir(path.parent)

    def _get(self, key: str, path: Path, byte_range: tuple[int, int] | None) -> bytes:
        try:
            with open(path, "rb") as f:
                meta, header_size = self._read_header(key, f)
                size = os.fstat(f.fileno()).st_size - header_size
                if byte_range is None:
                    data = f.read()
                    expected = meta.get(CHECKSUM_METADATA_KEY)
                    if expected is not None:
                        verify(data, expected, what=f"object {key!r} in {self.description}")
                    return data
                start, end = byte_range
                if start == end:
                    return b""
                if start >= size:
                    raise RangeNotSatisfiable(
                        f"range [{start}, {end}) of {key!r} starts past its size {size}"
                    )
                f.seek(header_size + start)
                return f.read(min(end, size) - start)
        except _NOT_FOUND as exc:
            raise ObjectNotFound(f"object {key!r} not found in {self.description}") from exc
        except OSError as exc:
            raise StoreError(f"get {key!r} from {self.description} failed: {exc}") from exc

    def _head(self, key: str, path: Path) -> ObjectInfo | None:
        try:
            with open(path, "rb") as f:
                meta, header_size = self._read_header(key, f)
                size = os.fstat(f.fileno()).st_size - header_size
        except _NOT_FOUND:
            return None
        except OSError as exc:
            raise StoreError(f"head {key!r} in {self.description} failed: {exc}") from exc
        return ObjectInfo(key=key, size=size, etag=meta.get(CHECKSUM_METADATA_KEY), metadata=meta)

    def _read_header(self, key: str, f: BinaryIO) -> tuple[dict[str, str], int]:
        fixed = f.read(len(_MAGIC) + _LEN.size)
        if len(fixed) != len(_MAGIC) + _LEN.size or not fixed.startswith(_MAGIC):
            raise StoreError(f"object {key!r} in {self.description} has no streamd header")
        (length,) = _LEN.unpack_from(fixed, len(_MAGIC))
        raw = f.read(length) if length <= _MAX_HEADER else b""
        try:
            meta = json.loads(raw)["metadata"]
            if not isinstance(meta, dict):
                raise TypeError("metadata is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"object {key!r} in {self.description} has a bad header") from exc
        return {str(k): str(v) for k, v in meta.items()}, len(fixed) + length

    def _list(self, prefix: str) -> builtins.list[ObjectInfo]:
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if any(part in ("..", ".") for part in base_dir.split("/")):
            raise InvalidKey(f"invalid list prefix {prefix!r}")
        top = self._root.joinpath(*base_dir.split("/")) if base_dir else self._root
        keys: builtins.list[str] = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel_dir = Path(dirpath).relative_to(self._root).as_posix()
            if rel_dir == ".":
                rel_dir = ""
                dirnames[:] = [d for d in dirnames if d != _TMP_DIR]
            for name in filenames:
                key = f"{rel_dir}/{name}" if rel_dir else name
                if key.startswith(prefix):
                    keys.append(key)
        infos = []
        for key in sorted(keys):
            info = self._head(key, self._root / key)
            if info is not None:
                infos.append(ObjectInfo(key=key, size=info.size, etag=info.etag))
        return infos

    def _delete_all(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self._delete(path)

    def _delete(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except IsADirectoryError:
            return
        except OSError as exc:
            raise StoreError(f"delete {path} from {self.description} failed: {exc}") from exc
        parent = path.parent
        while parent != self._root and self._root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

