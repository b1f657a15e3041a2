"""One log segment: ``<base>.log`` holding whole v2 batches, plus its two sparse indexes.

Invariants:
- The file is append-only while active and immutable once sealed; bytes at a position never
  change once readable (``readable_size``; an unacknowledged tail that never became readable
  may be cut again, see :meth:`Segment.truncate_to`), so a :class:`FileSlice` handed to a
  reader stays valid, even after the segment is deleted while its descriptor is open.
- Offsets are dense: batches follow each other with ``base_offset == previous last + 1`` and the
  first batch starts at the segment's ``base_offset``; ``next_offset`` is last offset + 1.
- ``size`` is the logical end of the file: every byte below it belongs to a validated batch.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from streamd.errors import StorageError
from streamd.log.batch import HEADER_SIZE, LOG_OVERHEAD, PREFIX, BatchHeader, iter_record_timestamps
from streamd.log.batch import parse_header as _parse_header
from streamd.log.descriptors import DESCRIPTORS
from streamd.log.files import pread_exactly
from streamd.log.index import OffsetIndex, TimeIndex
from streamd.log.txn_index import SUFFIX as TXN_INDEX_SUFFIX
from streamd.log.txn_index import TxnIndex

NO_TIMESTAMP = -1
_DROP_STEP = 1 << 20


def segment_path(directory: Path, base_offset: int, suffix: str) -> Path:
    return directory / f"{base_offset:020d}{suffix}"


class SegmentFile:
    """A segment file, opened on first use and kept open while the process-wide
    :data:`~streamd.log.descriptors.DESCRIPTORS` cache has room for it (see that module).

    The file is created by the constructor (``create``) but not kept open. A user that hands
    the descriptor to another thread, or keeps it across an ``await``, pins it first
    (:meth:`pin` / :meth:`unpin`); :meth:`close` retires the file for good, but a pinned
    descriptor stays open until its last user unpins it.
    """

    __slots__ = (
        "path", "_fd", "uncached_below", "dev", "pins", "readers", "retired", "linger",
        "__weakref__",
    )

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._fd = -1
        self.pins = 0
        self.readers = 0
        self.retired = False
        self.linger = False
        self.dev = -1
        self.uncached_below = 0
        """Pages below this position are kept out of the OS page cache (see ``drop_synced``)."""
        if create:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))

    # ---- the cache's side (called under its lock) ------------------------------------------

    def open_descriptor(self) -> int:
        if self.retired:
            raise StorageError(f"segment file {self.path.name} is closed")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        except OSError as exc:
            raise StorageError(
                f"cannot open segment file {self.path.name}: {exc.strerror}"
            ) from exc
        if self.dev == -1:
            self.dev = os.fstat(fd).st_dev
        self._fd = fd
        return fd

    def close_descriptor(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    # ---- users -----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    @property
    def fd(self) -> int:
        """An open descriptor for immediate use on the calling thread (it may be closed once
        another file is opened): pin the file to keep it longer or hand it to a thread."""
        return DESCRIPTORS.touch(self, self._fd)

    def pin(self) -> int:
        """Open if needed and keep open until :meth:`unpin`; returns the descriptor."""
        return DESCRIPTORS.pin(self, self._fd)

    def unpin(self) -> None:
        DESCRIPTORS.unpin(self)

    @staticmethod
    def pin_all(files: list[SegmentFile]) -> None:
        """Pin every file of ``files`` (all or none: raises StorageError)."""
        DESCRIPTORS.pin_all(list(files), [f._fd for f in files])

    @staticmethod
    def unpin_all(files: list[SegmentFile]) -> None:
        DESCRIPTORS.unpin_all(list(files))

    @property
    def pinned_fd(self) -> int:
        """The descriptor of a pinned file (-1 if it is not open: never true while pinned)."""
        return self._fd

    def dup(self) -> int:
        """A private duplicate of the descriptor, owned (and closed) by the caller."""
        fd = self.pin()
        try:
            return os.dup(fd)
        finally:
            self.unpin()

    def write_all(self, data: memoryview) -> None:
        fd = self.pin()
        try:
            while data:
                data = data[os.write(fd, data) :]
        finally:
            self.unpin()

    def fsync(self) -> None:
        fd = self.pin()
        try:
            os.fsync(fd)
        finally:
            self.unpin()

    def truncate(self, size: int) -> None:
        """Cut the file at ``size`` (never needs free space)."""
        fd = self.pin()
        try:
            os.ftruncate(fd, size)
        finally:
            self.unpin()

    def drop_synced(self, keep: int) -> None:
        """Drop this file's cached pages except the last ``keep`` bytes (``keep`` < 0: none).

        Called right after an fsync, on a pinned file, so the pages are clean and the kernel
        frees them at once. Moves in steps of 1 MiB so that a busy partition makes one call
        per MiB, not per batch.
        """
        fd = self._fd
        if fd < 0 or keep < 0:
            return
        upto = (os.fstat(fd).st_size - keep) & ~(_DROP_STEP - 1)
        if upto > self.uncached_below:
            os.posix_fadvise(fd, self.uncached_below, upto - self.uncached_below,
                             os.POSIX_FADV_DONTNEED)
            self.uncached_below = upto

    def drop_behind(self, position: int, length: int) -> None:
        """After a bulk read: drop the pages it pulled in below ``uncached_below`` (a consumer
        replaying old data then cycles through a few pages instead of filling the cache)."""
        end = min(position + length, self.uncached_below)
        if end > position and self._fd >= 0:
            fd = self.pin()
            try:
                os.posix_fadvise(fd, position, end - position, os.POSIX_FADV_DONTNEED)
            finally:
                self.unpin()

    def pread(self, length: int, position: int) -> bytes:
        fd = self.pin()
        try:
            return pread_exactly(fd, length, position, self.path.name)
        finally:
            self.unpin()

    def close(self) -> None:
        """Retire the file: no reopening; the descriptor closes now or at the last unpin."""
        DESCRIPTORS.retire(self)

    def unlinked(self) -> None:
        """The file was deleted: never reopen it; its descriptor closes at once, or once the
        last slice read from it is gone (what was read stays readable)."""
        DESCRIPTORS.unlinked(self)

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)


class FileSlice:
    """Whole batches ``[position, position + length)`` of one segment file.

    A slice does not pin its file (a fetch of a thousand partitions would hold a thousand
    descriptors): reading it opens the file again if the cache closed it meanwhile. It is a
    *reader* of the file, though: a segment deleted while a slice of it lives keeps its open
    descriptor until the slice is gone. (If the descriptor had been closed before the
    deletion, reading fails with StorageError: the fetch answers an error and the client asks
    again.)"""

    __slots__ = ("file", "position", "length")

    def __init__(self, file: SegmentFile, position: int, length: int) -> None:
        DESCRIPTORS.add_reader(file)
        self.file = file
        self.position = position
        self.length = length

    def __del__(self) -> None:
        DESCRIPTORS.drop_reader(self.file)

    def __repr__(self) -> str:
        return f"FileSlice({self.file.path.name}, {self.position}, {self.length})"

    @property
    def path(self) -> Path:
        return self.file.path

    @property
    def fd(self) -> int:
        """An open descriptor for immediate use (``os.dup`` it to keep it)."""
        return self.file.fd

    def read_bytes(self) -> bytes:
        data = self.file.pread(self.length, self.position)
        self.file.drop_behind(self.position, self.length)
        return data


class Segment:
    def __init__(
        self,
        directory: Path,
        base_offset: int,
        *,
        index_interval_bytes: int,
        created_ms: int,
        file: SegmentFile | None = None,
        offset_index: OffsetIndex | None = None,
        time_index: TimeIndex | None = None,
    ) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.path = segment_path(directory, base_offset, ".log")
        self.index_path = segment_path(directory, base_offset, ".index")
        self.timeindex_path = segment_path(directory, base_offset, ".timeindex")
        self.file = file or SegmentFile(self.path)
        self.offset_index = offset_index or OffsetIndex(self.index_path, base_offset)
        self.time_index = time_index or TimeIndex(self.timeindex_path, base_offset)
        self.txn_index = TxnIndex(segment_path(directory, base_offset, TXN_INDEX_SUFFIX))
        """Aborted transactions whose marker is in this segment (loaded by the partition)."""
        self.index_interval_bytes = index_interval_bytes
        self.size = 0
        self.readable_size = 0
        """Bytes actually in the file; below ``size`` while deferred writes are pending."""
        self.next_offset = base_offset
        self.first_timestamp = NO_TIMESTAMP
        self.max_timestamp = NO_TIMESTAMP
        self.created_ms = created_ms
        self.last_append_ms = created_ms
        self.sealed = False
        self.last_batch_base = base_offset
        self._bytes_since_index = 0

    @property
    def name(self) -> str:
        """``<topic>/<partition>/<file>``: names the file without the data directory."""
        return f"{self.directory.parent.name}/{self.directory.name}/{self.path.name}"

    def __repr__(self) -> str:
        return (
            f"Segment({self.path.name}, offsets [{self.base_offset}, {self.next_offset}), "
            f"size={self.size}, sealed={self.sealed})"
        )

    @property
    def is_empty(self) -> bool:
        return self.size == 0

    @property
    def last_offset(self) -> int:
        return self.next_offset - 1

    def track(self, header: BatchHeader, position: int) -> None:
        """Account for a batch now stored at ``position`` (append and index rebuild share this)."""
        if self.size == 0:
            self.first_timestamp = header.first_timestamp
        self.max_timestamp = max(self.max_timestamp, header.max_timestamp)
        if self._bytes_since_index >= self.index_interval_bytes:
            self.offset_index.append(header.base_offset, position)
            self.time_index.maybe_append(self.max_timestamp, header.base_offset)
            self._bytes_since_index = 0
        self._bytes_since_index += header.size
        self.last_batch_base = header.base_offset
        self.next_offset = header.next_offset
        self.size = self.readable_size = position + header.size

    def append(self, data: bytes | bytearray, headers: Sequence[BatchHeader], now_ms: int) -> None:
        """Write contiguous, already offset-patched batches at the end of the file."""
        start = self.size
        if start == 0:
            self.created_ms = now_ms
        view = memoryview(data)
        try:
            self.file.write_all(view)
        except OSError as exc:
            with contextlib.suppress(OSError, StorageError):
                self.file.truncate(start)
            raise StorageError(f"write to {self.name} failed: {exc.strerror}") from exc
        finally:
            view.release()
        position = start
        for header in headers:
            self.track(header, position)
            position += header.size
        self.last_append_ms = now_ms

    def track_deferred(self, headers: Sequence[BatchHeader], now_ms: int) -> None:
        """Account for batches whose bytes the partition writes later, in order, before the
        fsync that makes them visible (fsync "always"); ``size`` already includes them."""
        position = self.size
        readable = self.readable_size
        if position == 0:
            self.created_ms = now_ms
        for header in headers:
            self.track(header, position)
            position += header.size
        self.readable_size = readable
        self.last_append_ms = now_ms

    def iter_headers(self, position: int = 0) -> Iterator[tuple[int, BatchHeader]]:
        while position + HEADER_SIZE <= self.readable_size:
            header = _parse_header(self.file.pread(HEADER_SIZE, position))
            yield position, header
            position += header.size

    def find_position(self, offset: int) -> tuple[int, int] | None:
        """(position, base offset) of the batch holding ``offset``; None if not in here."""
        if not self.base_offset <= offset < self.next_offset:
            return None
        _, position = self.offset_index.lookup(offset)
        for pos, header in self.iter_headers(position):
            if header.last_offset >= offset:
                return pos, header.base_offset
        return None

    def read(
        self, position: int, max_bytes: int, min_one: bool = True, end_offset: int | None = None
    ) -> FileSlice | None:
        """Whole batches from ``position`` totalling at most ``max_bytes``, stopping at batches
        whose base offset is ``>= end_offset``. With ``min_one`` the first batch is returned even
        when it alone exceeds ``max_bytes`` (KIP-74). The offset index lets the scan start at
        the last indexed batch that still fits, so only the headers after it are read."""
        readable = self.readable_size
        pos = self.offset_index.farthest_within(
            position, min(position + max_bytes, readable), end_offset
        )
        while pos + LOG_OVERHEAD <= readable:
            base, batch_length = PREFIX.unpack(self.file.pread(LOG_OVERHEAD, pos))
            if end_offset is not None and base >= end_offset:
                break
            total = batch_length + LOG_OVERHEAD
            if pos - position + total > max_bytes and not (pos == position and min_one):
                break
            pos += total
        if pos == position:
            return None
        return FileSlice(self.file, position, pos - position)

    def read_batch(self, position: int, header: BatchHeader) -> bytes:
        return self.file.pread(header.size, position)

    def offset_for_timestamp(
        self, timestamp: int, min_offset: int, end_offset: int
    ) -> tuple[int, int] | None:
        """First (offset, timestamp) in ``[min_offset, end_offset)`` with timestamp >= target."""
        if self.max_timestamp < timestamp:
            return None
        start = max(self.time_index.offset_before(timestamp), min_offset, self.base_offset)
        found = self.find_position(start)
        if found is None:
            return None
        for pos, header in self.iter_headers(found[0]):
            if header.base_offset >= end_offset:
                return None
            if header.max_timestamp < timestamp or header.last_offset < min_offset:
                continue
            for offset, ts in iter_record_timestamps(self.read_batch(pos, header)):
                if ts >= timestamp and min_offset <= offset < end_offset:
                    return offset, ts
        return None

    def seal(self) -> None:
        """Make the segment immutable: final time-index entry, index files closed."""
        if self.sealed:
            return
        if self.size:
            self.time_index.maybe_append(self.max_timestamp, self.last_batch_base)
        self.offset_index.close()
        self.time_index.close()
        self.sealed = True

    def fsync(self) -> None:
        self.file.fsync()

    def fsync_indexes(self) -> None:
        self.offset_index.fsync()
        self.time_index.fsync()

    def close(self) -> None:
        self.offset_index.close()
        self.time_index.close()
        self.file.close()

    def delete(self) -> None:
        """Remove the files; open slices keep reading from the unlinked file until dropped."""
        self.offset_index.delete()
        self.time_index.delete()
        self.txn_index.delete()
        self.path.unlink(missing_ok=True)
        self.file.unlinked()

    def truncate_to(self, size: int) -> None:
        """Forget everything at and after byte ``size`` (a batch boundary at or below
        ``readable_size``): the file, the index entries that point there, and the tracked
        offsets and timestamps. Used to drop writes that were never acknowledged; never needs
        free space. The segment becomes unsealed (it is the active one again).

        Only the batches after the last kept index entry are read again: the running maximum
        timestamp up to that entry is the time index's last kept entry."""
        self.file.truncate(size)
        kept = bisect.bisect_left(self.offset_index.values, size)
        self.offset_index.truncate(kept)
        from_position = int(self.offset_index.values[kept - 1]) if kept else 0
        self.size = self.readable_size = size
        self.sealed = False
        if size == 0:
            self.time_index.truncate(0)
            self.next_offset = self.last_batch_base = self.base_offset
            self.first_timestamp = self.max_timestamp = NO_TIMESTAMP
            self._bytes_since_index = 0
            return
        last = None
        max_ts = NO_TIMESTAMP
        for _, header in self.iter_headers(from_position):
            last = header
            max_ts = max(max_ts, header.max_timestamp)
        assert last is not None, "truncate_to needs a batch boundary"
        self.next_offset = last.next_offset
        self.last_batch_base = last.base_offset
        times = self.time_index
        times.truncate(bisect.bisect_left(times.values, self.next_offset - self.base_offset))
        if times.keys:
            max_ts = max(max_ts, times.keys[-1])
        self.max_timestamp = max_ts
        self._bytes_since_index = size - from_position
