"""Whether the data directory's filesystem has room, as the log layer last saw it.

A write that fails with ENOSPC (or EDQUOT) is not a broken disk: it fails the appends it
carried, the partition drops the unacknowledged tail (see ``PartitionLog``), and the monitor
marks the filesystem *full*. While it is full, appends are refused at once with
KAFKA_STORAGE_ERROR (a retriable error: producers retry) instead of each one failing a flush
round. Reads, retention and deletion go on: none of them needs free space. The monitor looks
at the free space again at most every ``CHECK_INTERVAL_S`` while appends keep asking (and when
the health route asks), and writes resume by themselves once space was freed: at least
``RESUME_FREE_BYTES`` more than right after the failure (measured once the failed writes were
cut off again), so that retries do not fill the same few bytes and fail over and over.

Any other I/O error (EIO, a failed fsync) is a real failure: the partition refuses writes
until restart, because the page cache may have dropped acknowledged bytes.

Decision: "free" is what the broker itself can use, so blocks reserved for root count when
the broker runs as root (ext4 keeps 5% for root; the broker then fills it before ENOSPC).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("streamd.log")

RESUME_FREE_BYTES = 1 << 20
CHECK_INTERVAL_S = 0.25
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_out_of_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or the error it was raised from) says the filesystem is full."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return True
        exc = exc.__cause__
    return False


class DiskMonitor:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.full = False
        """Set by a write that failed for lack of space; cleared once space is back."""
        self.since_ms: int | None = None
        self.error: str | None = None
        self.failures = 0
        self._checked = 0.0
        self._baseline: int | None = None
        """Free bytes once the failed writes were dropped (taken at the first check)."""

    def note(self, exc: BaseException) -> bool:
        """Record a failed write; returns whether it was for lack of space."""
        if not is_out_of_space(exc):
            return False
        self.failures += 1
        if not self.full:
            self.full = True
            self.since_ms = time.time_ns() // 1_000_000
            self.error = _reason(exc)
            self._baseline = None
            self._checked = 0.0
            log.error(
                "data directory %s is full (%s): appends are refused until space is freed "
                "(DeleteRecords, retention, deleting a topic, or outside the broker)",
                self.directory, self.error,
            )
        return True

    def writable(self) -> bool:
        """False while full; re-checks the free space at most every ``CHECK_INTERVAL_S``."""
        if not self.full:
            return True
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL_S:
            return False
        self._checked = now
        return self.refresh()

    def free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.directory)
        except OSError:
            return None
        blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
        return blocks * st.f_frsize

    def refresh(self) -> bool:
        """Look at the free space now; returns whether appends may go ahead."""
        if not self.full:
            return True
        free = self.free_bytes()
        if free is None:
            return False
        if self._baseline is None:
            self._baseline = free
            return False
        if free >= self._baseline + RESUME_FREE_BYTES:
            log.warning("data directory %s has %d bytes free again: appends resume",
                        self.directory, free)
            self.full = False
            self.since_ms = None
            self.error = None
        return not self.full

    def health(self) -> dict[str, Any]:
        """The ``disk`` component of ``/v1/health``."""
        self.refresh()
        free = self.free_bytes()
        doc: dict[str, Any] = {
            "status": "full" if self.full else "ok",
            "free_bytes": free,
            "write_failures": self.failures,
        }
        if self.full:
            doc["full_since_ms"] = self.since_ms
            doc["error"] = self.error
        return doc


def _reason(exc: BaseException) -> str:
    while exc is not None:
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        if exc.__cause__ is None:
            return str(exc)
        exc = exc.__cause__
    return "unknown"
