"""One ``syncfs(2)`` per group commit instead of one ``fsync(2)`` per file.

A flush round with fsync "always" makes every file written since the previous round durable.
Done file by file, each fsync is its own journal commit and device cache flush: with 8 busy
partitions that is 8 flushes per round, with 1,000 it is 1,000 (measured here: 179 ms per round
for 1,000 small writes, against 8.5 ms with one syncfs; 1.5 ms against 0.2 ms for 8 files).
``syncfs`` writes back and waits for every dirty file of the filesystem, then commits once.

It is as durable as fsync for the files it covers (data and metadata, directories included),
but it only reports write-back errors reliably since Linux 5.8 (errseq on the superblock,
sampled per open file), so it is used only there; elsewhere, and for files on another
filesystem than the data directory, the flush falls back to fsync per file. The descriptor is
opened once and kept, so every error is reported to it exactly once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
from pathlib import Path

MIN_KERNEL = (5, 8)


def _kernel_version() -> tuple[int, int]:
    try:
        major, minor = platform.release().split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


def _libc_syncfs() -> object | None:
    if platform.system() != "Linux" or _kernel_version() < MIN_KERNEL:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class FilesystemSync:
    """``syncfs`` of the filesystem holding ``directory``; :attr:`available` says if usable."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._syncfs = _libc_syncfs()
        self._fd = -1
        self.dev = -1
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self._syncfs is not None

    def _open(self) -> int:
        if self._fd >= 0:
            return self._fd  # the common case: no lock per file of a flush round
        with self._lock:
            if self._fd < 0:
                fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
                self.dev = os.fstat(fd).st_dev
                self._fd = fd
            return self._fd

    def covers(self, dev: int) -> bool:
        """Whether a file on device ``dev`` is made durable by :meth:`sync`."""
        self._open()
        return dev == self.dev

    def sync(self) -> None:
        """Write back and commit the whole filesystem; raise OSError on a write-back error."""
        fd = self._open()
        if self._syncfs(fd) != 0:  # type: ignore[operator]
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of {self.directory}: {os.strerror(err)}")

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
