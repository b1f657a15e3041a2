"""Small durable-file helpers shared by the log layer.

Metadata files (``topic.json``, ``log-start-offset``, the clean-shutdown marker) are replaced
atomically: write a temporary file, fsync it, rename it over the target, fsync the directory.
A crash leaves either the old or the new content, never a torn file.
"""

from __future__ import annotations

import os
from pathlib import Path

from streamd.errors import StorageError


def pread_exactly(fd: int, length: int, position: int, what: object = "file") -> bytes:
    """``length`` bytes of ``fd`` at ``position``; StorageError if the file ends first."""
    data = os.pread(fd, length, position)
    while len(data) < length:
        more = os.pread(fd, length - len(data), position + len(data))
        if not more:
            raise StorageError(f"short read of {what} at {position}: it ends first")
        data += more
    return data


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_fully(fd: int, data: bytes | memoryview) -> None:
    """All of ``data`` at ``fd``'s position (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_fully(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
