"""Fetch responses from segment files straight to the socket with ``sendfile(2)``.

On listeners without TLS, a fetched record set of at least ``codec.SCATTER_MIN`` bytes is not
read into memory: the response carries a :class:`FileRecords` (file, position, length) in place
of the bytes, and the connection sends the frame as the small encoded parts around it plus one
``sendfile`` per record set. The kernel moves the page-cache pages to the socket; the broker
never copies them. With TLS (or when the file cannot be used) the bytes are read as before.

While such a response is being sent, the connection writes on a duplicate of the socket's
descriptor, with the event loop telling it when the socket is writable again, and holds back
the responses after it; the transport's own buffer is empty at that point, so the bytes of all
responses stay in request order. The file descriptor is duplicated when the response is built,
so deleting or closing the segment meanwhile cannot redirect the send to another file.

Each duplicate is a descriptor held until the response is sent, which a client decides by
reading or not. So they are counted (:class:`FileBudget`): per connection and for the whole
broker. A record set that would exceed either count is read into memory instead, where the
connection's in-flight byte bound applies (see :mod:`streamd.kafka.connection`); a client that
stops reading therefore pins a bounded number of descriptors, and never makes the broker run
out of them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

from streamd.errors import StorageError
from streamd.log.files import pread_exactly
from streamd.log.segment import FileSlice


class FileBudget:
    """How many descriptors unsent responses may hold: ``limit`` here, and within ``parent``.

    Used from the event loop thread only.
    """

    __slots__ = ("limit", "used", "parent")

    def __init__(self, limit: int, parent: FileBudget | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.parent = parent

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        if self.parent is not None and not self.parent.take():
            return False
        self.used += 1
        return True

    def give(self) -> None:
        self.used -= 1
        if self.parent is not None:
            self.parent.give()


class FileRecords:
    """``length`` bytes at ``position`` of a segment file, owned by one response."""

    __slots__ = ("fd", "position", "length", "uncached_below", "budget")

    @classmethod
    def pin(cls, piece: FileSlice, budget: FileBudget) -> FileRecords | None:
        """The range as a :class:`FileRecords` counted in ``budget``; None when it is spent."""
        if not budget.take():
            return None
        try:
            records = cls(piece)
        except BaseException:
            budget.give()
            raise
        records.budget = budget
        return records

    def __init__(self, piece: FileSlice) -> None:
        self.fd = -1
        self.budget: FileBudget | None = None
        if piece.fd < 0:
            raise StorageError(f"{piece.path} is closed")
        self.fd = os.dup(piece.fd)
        self.position = piece.position
        self.length = piece.length
        self.uncached_below = piece.file.uncached_below
        if self.position < self.uncached_below:
            # Older data is probably not in the page cache: ask for the whole range at once
            # (sendfile alone reads it in small steps as it goes: 35% slower here).
            # The range after it too: a consumer catching up asks for it next, and its disk
            # read then overlaps this response's transfer.
            os.posix_fadvise(self.fd, self.position, 2 * self.length, os.POSIX_FADV_WILLNEED)

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        """The bytes themselves (for a transport that cannot take a file)."""
        return pread_exactly(self.fd, self.length, self.position, "a segment file")

    def __del__(self) -> None:
        self.close()  # a response dropped before it was sent (error, cancelled request)

    def close(self) -> None:
        """Release the descriptor; pages below the file's page cache window are dropped, as
        after a read (see ``SegmentFile.drop_behind``)."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        if self.budget is not None:
            self.budget.give()
        try:
            end = min(self.position + self.length, self.uncached_below)
            if end > self.position:
                os.posix_fadvise(fd, self.position, end - self.position, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def has_files(parts: Iterable[Any]) -> bool:
    return any(isinstance(p, FileRecords) for p in parts)


def close_files(parts: Iterable[Any] | None) -> None:
    for part in parts or ():
        if isinstance(part, FileRecords):
            part.close()


async def send_parts(loop: asyncio.AbstractEventLoop, sock_fd: int, parts: list[Any]) -> int:
    """Write ``parts`` in order on the non-blocking socket ``sock_fd``; files by sendfile.
    Returns the bytes sent by sendfile."""
    by_sendfile = 0
    for part in parts:
        if isinstance(part, FileRecords):
            offset, left = part.position, part.length
            while left:
                try:
                    sent = os.sendfile(sock_fd, part.fd, offset, left)
                except BlockingIOError:
                    await _writable(loop, sock_fd)
                    continue
                if sent == 0:
                    raise StorageError("segment file ended before the fetched range")
                offset += sent
                left -= sent
            by_sendfile += part.length
        else:
            view = memoryview(part)
            try:
                while view:
                    try:
                        sent = os.write(sock_fd, view)
                    except BlockingIOError:
                        await _writable(loop, sock_fd)
                        continue
                    view = view[sent:]
            finally:
                view.release()
    return by_sendfile


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
