"""Sparse per-segment indexes, kept in memory and appended to a file.

Offset index (``<base>.index``): 8-byte entries ``(offset - base) u32, file position u32``, one
per ``index.interval.bytes`` of log, each pointing at the start of a batch. Both columns are
strictly increasing, so a floor lookup gives a batch at or before any wanted offset.

Time index (``<base>.timeindex``): 12-byte entries ``max timestamp so far i64, offset - base
u32``, where the offset is the base offset of the batch that brought the maximum; timestamps are
strictly increasing. Every record at or before that batch has a timestamp <= the entry's, so
scanning from the last entry *below* a target timestamp never skips a match.

Indexes are derived data: recovery rebuilds them from the log whenever they are missing or
disagree with it, so they are written without fsync.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from array import array
from bisect import bisect_left, bisect_right
from pathlib import Path

log = logging.getLogger("streamd.log")

WRITE_BLOCK = 4096
"""Pending index entries are appended to the file once they reach this many bytes."""

class _SparseIndex:
    ENTRY: struct.Struct
    KEY_TYPE: str
    VALUE_TYPE: str

    def __init__(self, path: Path, base_offset: int) -> None:
        self.path = path
        self.base_offset = base_offset
        self.keys = array(self.KEY_TYPE)
        self.values = array(self.VALUE_TYPE)
        self._unwritten = bytearray()
        self.persist = True
        """False while recovery rebuilds the entries in memory before one :meth:`rewrite`."""

    def __len__(self) -> int:
        return len(self.keys)

    def _append(self, key: int, value: int) -> None:
        self.keys.append(key)
        self.values.append(value)
        if not self.persist:
            return
        # Entries reach the file in blocks, not one write(2) each: the index is derived data
        # (recovery checks it against the log and rebuilds it), so a tail lost in a crash only
        # makes it sparser. Sealing, fsync and close write out what is pending.
        self._unwritten += self.ENTRY.pack(key, value)
        if len(self._unwritten) >= WRITE_BLOCK:
            self.write_out()

    def write_out(self) -> None:
        """Append the pending entries to the file (opened for this write only, so an index
        holds no descriptor between writes). A failed write (a full disk) is cut off again
        and its entries are dropped from the file: the index file is derived data, a sparser
        one is still correct, and recovery rebuilds one that disagrees with the log."""
        if not self._unwritten:
            return
        pending, self._unwritten = self._unwritten, bytearray()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            log.warning("cannot write index %s: %s", self.path.name, exc.strerror)
            return
        try:
            start = os.fstat(fd).st_size
            view = memoryview(pending)
            try:
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                log.warning("cannot write index %s: %s", self.path.name, exc.strerror)
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
            finally:
                view.release()
        finally:
            os.close(fd)

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` entries, in memory and in the file."""
        if count >= len(self.keys):
            return
        size = self.ENTRY.size
        in_file = len(self.keys) - len(self._unwritten) // size
        del self.keys[count:]
        del self.values[count:]
        if count >= in_file:
            del self._unwritten[(count - in_file) * size :]
            return
        self._unwritten.clear()
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.path, count * size)

    def entries(self) -> list[tuple[int, int]]:
        return list(zip(self.keys, self.values, strict=True))

    def encode(self) -> bytes:
        return b"".join(self.ENTRY.pack(k, v) for k, v in zip(self.keys, self.values, strict=True))

    def _load(self, data: bytes) -> bool:
        if len(data) % self.ENTRY.size:
            return False
        for key, value in self.ENTRY.iter_unpack(data):
            self.keys.append(key)
            self.values.append(value)
        return True

    def rewrite(self) -> bool:
        """Replace the file with the in-memory entries (tmp + rename). On failure (a full
        disk) the stale file is removed instead, which never needs space: the entries appended
        from now on start a new, sparser file, and recovery rebuilds a missing one. Returns
        whether the file now holds every entry."""
        self._unwritten.clear()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(self.encode())
            os.replace(tmp, self.path)
            return True
        except OSError as exc:
            log.warning("cannot rewrite index %s (%s); removing it", self.path.name, exc.strerror)
            for path in (tmp, self.path):
                with contextlib.suppress(OSError):
                    path.unlink()
            return False

    def fsync(self) -> None:
        self.write_out()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.write_out()

    def delete(self) -> None:
        self._unwritten.clear()
        self.path.unlink(missing_ok=True)


class OffsetIndex(_SparseIndex):
    ENTRY = struct.Struct(">II")
    KEY_TYPE = "I"
    VALUE_TYPE = "I"

    def append(self, offset: int, position: int) -> None:
        self._append(offset - self.base_offset, position)

    def lookup(self, offset: int) -> tuple[int, int]:
        """Floor entry for ``offset`` as (indexed offset, position); (base, 0) if none."""
        i = bisect_right(self.keys, offset - self.base_offset) - 1
        if i < 0:
            return self.base_offset, 0
        return self.base_offset + self.keys[i], self.values[i]

    def farthest_within(self, position: int, limit: int, end_offset: int | None) -> int:
        """The largest indexed batch position in ``(position, limit]`` whose batch starts below
        ``end_offset``; ``position`` when there is none. Everything before it is whole batches,
        so a reader can skip straight there instead of walking every header."""
        i = bisect_right(self.values, limit) - 1
        if end_offset is not None:
            i = min(i, bisect_right(self.keys, end_offset - self.base_offset) - 1)
        if i < 0 or self.values[i] <= position:
            return position
        return int(self.values[i])

    @classmethod
    def load(
        cls, path: Path, base_offset: int, *, log_size: int, next_offset: int | None
    ) -> OffsetIndex | None:
        """Read an index file; None when missing or inconsistent with the log."""
        index = cls(path, base_offset)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not index._load(data):
            return None
        if any(a >= b for a, b in zip(index.keys, index.keys[1:], strict=False)):
            return None
        if any(a >= b for a, b in zip(index.values, index.values[1:], strict=False)):
            return None
        if index.values and index.values[-1] >= log_size:
            return None
        if index.keys and next_offset is not None and base_offset + index.keys[-1] >= next_offset:
            return None
        return index


class TimeIndex(_SparseIndex):
    ENTRY = struct.Struct(">qI")
    KEY_TYPE = "q"
    VALUE_TYPE = "I"

    @property
    def last_timestamp(self) -> int | None:
        return self.keys[-1] if self.keys else None

    def maybe_append(self, max_timestamp: int, offset: int) -> None:
        if not self.keys or max_timestamp > self.keys[-1]:
            self._append(max_timestamp, offset - self.base_offset)

    def offset_before(self, timestamp: int) -> int:
        """Base offset of a batch from which scanning finds the first record >= ``timestamp``."""
        i = bisect_left(self.keys, timestamp) - 1
        if i < 0:
            return self.base_offset
        return self.base_offset + self.values[i]

    @classmethod
    def load(cls, path: Path, base_offset: int, *, next_offset: int | None) -> TimeIndex | None:
        index = cls(path, base_offset)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not index._load(data):
            return None
        if any(a >= b for a, b in zip(index.keys, index.keys[1:], strict=False)):
            return None
        if any(a > b for a, b in zip(index.values, index.values[1:], strict=False)):
            return None
        if index.keys and next_offset is not None and base_offset + index.values[-1] >= next_offset:
            return None
        return index
