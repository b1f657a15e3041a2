"""One broker per data_dir: an exclusive ``flock`` on ``data_dir/.lock``, held for the life
of the process.

The lock file holds the holder's pid, written after the lock is taken, so a second broker can
say who holds it. ``flock`` is released by the kernel when the process dies (kill -9
included), so a stale file never blocks a restart; the file itself is left in place.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from streamd.errors import StreamdError

LOCK_NAME = ".lock"


class DataDirLocked(StreamdError):
    """Another process holds the data_dir."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd = -1

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirLocked` naming the directory and the pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise DataDirLocked(
                f"data_dir {self.path.parent} is in use by {who} (lock {self.path}); "
                "stop that broker or choose another data_dir"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
