"""Kafka request framing as a pure state machine: bytes in, whole request frames out.

A frame is a 4-byte big-endian size followed by that many bytes. A negative size or one above
``max_bytes`` (``socket.request.max.bytes``, or the smaller pre-authentication bound) is a
protocol violation: the decoder raises before allocating anything for it, and the connection is
closed by the caller.

Frames are taken out one at a time (:meth:`FrameDecoder.next_frame`), so a caller that must not
look at the next request yet (a connection that is still authenticating) leaves its bytes here,
unparsed; the size limit in force is checked when a frame is taken, so a frame received before
authentication but taken after it is judged by the limit of that moment.

Received chunks are kept as they arrive and each frame is assembled with at most one copy (none
when a chunk is exactly one frame), since produce frames are often a megabyte or more.
"""

from __future__ import annotations

from collections import deque

from streamd.errors import InvalidRequest


class FrameTooLarge(InvalidRequest):
    pass


class FrameDecoder:
    __slots__ = ("_chunks", "_offset", "_have", "_max", "_need")

    def __init__(self, max_bytes: int) -> None:
        self._chunks: deque[bytes] = deque()
        self._offset = 0
        self._have = 0
        self._max = max_bytes
        self._need = -1

    @property
    def buffered(self) -> int:
        return self._have

    @property
    def max_bytes(self) -> int:
        return self._max

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        """Raised once a SASL connection is authenticated (it starts at the pre-auth bound)."""
        self._max = value

    def receive(self, data: bytes) -> None:
        """Add received bytes; take frames out with :meth:`next_frame`."""
        if data:
            self._chunks.append(bytes(data))
            self._have += len(data)

    def next_frame(self) -> bytes | None:
        """The next complete frame (without its size prefix), or None until more bytes come."""
        if self._need < 0:
            if self._have < 4:
                return None
            size = int.from_bytes(self._take(4), "big", signed=True)
            if size < 0 or size > self._max:
                raise FrameTooLarge(f"invalid request size {size} (limit {self._max})")
            self._need = size
        if self._have < self._need:
            return None
        frame = self._take(self._need)
        self._need = -1
        return frame

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every complete frame."""
        self.receive(data)
        frames: list[bytes] = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def _take(self, n: int) -> bytes:
        if n == 0:
            return b""
        chunks = self._chunks
        self._have -= n
        first = chunks[0]
        off = self._offset
        avail = len(first) - off
        if avail > n:
            self._offset = off + n
            return first[off : off + n]
        if avail == n:
            chunks.popleft()
            self._offset = 0
            return first if off == 0 else first[off:]
        parts = [memoryview(first)[off:]]
        chunks.popleft()
        need = n - avail
        while need:
            chunk = chunks[0]
            if len(chunk) <= need:
                parts.append(memoryview(chunk))
                chunks.popleft()
                need -= len(chunk)
                self._offset = 0
            else:
                parts.append(memoryview(chunk)[:need])
                self._offset = need
                need = 0
        return b"".join(parts)
