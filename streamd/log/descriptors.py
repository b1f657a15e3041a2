"""A bounded set of open segment-file descriptors, least recently used closed first.

Kafka keeps every segment of every partition open, so its descriptor count grows with the
partition count and an operator must raise ``ulimit -n`` to match. Here a segment file is
opened when it is first used and closed again when more than ``limit`` are open: the count is
bounded by the limit plus the files in use at that moment, whatever the number of partitions
(Redpanda bounds its open segment readers the same way). One process has one budget, like the
descriptor limit itself, so there is one cache per process (:data:`DESCRIPTORS`).

Use and eviction: a file in use is *pinned*; eviction never closes a pinned file, so a
descriptor handed to a worker thread (a flush round, a file being uploaded) stays valid until it
is unpinned. A file is *retired* when its partition closes (closed once unpinned) or when it is
deleted: then it also stays open while *readers* (fetch results not yet sent, see
``FileSlice``) refer to it, and is closed by the last one, so deleting frees the disk space at
once unless a reader still needs the bytes. Every method is safe to call from any thread.

Decision: the default limit is a quarter of the soft ``RLIMIT_NOFILE`` at first use, between
64 and 4096; the broker sets it from ``log.max_open_segment_files`` when that is not 0.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol

MIN_LIMIT = 64
MAX_DEFAULT_LIMIT = 4096


class CachedFile(Protocol):
    pins: int
    readers: int
    retired: bool
    linger: bool

    def open_descriptor(self) -> int: ...

    def close_descriptor(self) -> None: ...


def default_limit() -> int:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        return 1024
    if soft == resource.RLIM_INFINITY:
        return MAX_DEFAULT_LIMIT
    return max(MIN_LIMIT, min(MAX_DEFAULT_LIMIT, soft // 4))


class DescriptorCache:
    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self._open: OrderedDict[CachedFile, None] = OrderedDict()
        self._lock = threading.RLock()
        self.opened = 0
        """Opens so far (a file evicted and used again counts twice)."""

    @property
    def limit(self) -> int:
        if self._limit is None:
            self._limit = default_limit()
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        if value < 1:
            raise ValueError("the descriptor limit must be at least 1")
        with self._lock:
            self._limit = value
            self._evict()

    def __len__(self) -> int:
        return len(self._open)

    def pin(self, file: CachedFile, fd: int) -> int:
        """Open ``file`` if it is closed (``fd`` < 0), mark it used, and pin it."""
        with self._lock:
            if fd < 0:
                fd = file.open_descriptor()
                self.opened += 1
                self._open[file] = None
                file.pins += 1
                self._evict()
                return fd
            if file in self._open:
                self._open.move_to_end(file)
            file.pins += 1
            return fd

    def pin_all(self, files: list[CachedFile], fds: list[int]) -> None:
        """:meth:`pin` each file (one lock for all: a flush round pins every file it writes).
        If one cannot be opened, those pinned so far are unpinned and the error raised."""
        with self._lock:
            done = 0
            try:
                for file, fd in zip(files, fds, strict=True):
                    self.pin(file, fd)
                    done += 1
            except BaseException:
                for file in files[:done]:
                    self.unpin(file)
                raise

    def unpin_all(self, files: list[CachedFile]) -> None:
        with self._lock:
            for file in files:
                self.unpin(file)

    def touch(self, file: CachedFile, fd: int) -> int:
        """Open ``file`` if needed and mark it used, without pinning it: the descriptor is
        valid until something else is opened (use it at once, on the thread that asked)."""
        fd = self.pin(file, fd)
        with self._lock:
            file.pins -= 1
        return fd

    def unpin(self, file: CachedFile) -> None:
        with self._lock:
            file.pins -= 1
            if file.pins:
                return
            if file.retired:
                self._close_retired(file)
            elif len(self._open) > self.limit:
                self._evict()

    def add_reader(self, file: CachedFile) -> None:
        with self._lock:
            file.readers += 1

    def drop_reader(self, file: CachedFile) -> None:
        with self._lock:
            file.readers -= 1
            if file.retired and not file.readers:
                self._close_retired(file)

    def unlinked(self, file: CachedFile) -> None:
        """``file`` was deleted: never reopen it; close it once no user or reader is left."""
        with self._lock:
            file.retired = file.linger = True
            self._open.pop(file, None)
            self._close_retired(file)

    def retire(self, file: CachedFile) -> None:
        """Close ``file`` for good: now, or when its last user unpins it."""
        with self._lock:
            file.retired = True
            self._close_retired(file)

    def _close_retired(self, file: CachedFile) -> None:
        if file.pins or (file.linger and file.readers):
            return
        self._open.pop(file, None)
        file.close_descriptor()

    def _evict(self) -> None:
        excess = len(self._open) - self.limit
        if excess <= 0:
            return
        idle = []
        for file in self._open:
            if file.pins == 0:
                idle.append(file)
                if len(idle) == excess:
                    break
        for file in idle:
            del self._open[file]
            file.close_descriptor()


DESCRIPTORS = DescriptorCache()
"""The process-wide cache every :class:`streamd.log.segment.SegmentFile` uses."""
