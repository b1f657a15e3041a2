"""Kafka request framing as a pure state machine: bytes in, whole request frames out.

A frame is a 4-byte big-endian size followed by that many bytes. A negative size or one above
``max_bytes`` (``socket.request.max.bytes``) is a protocol violation: the decoder raises before
allocating anything for it, and the connection is closed by the caller.
"""

from __future__ import annotations

from streamd.errors import InvalidRequest


class FrameTooLarge(InvalidRequest):
    pass


class FrameDecoder:
    __slots__ = ("_buf", "_max", "_need")

    def __init__(self, max_bytes: int) -> None:
        self._buf = bytearray()
        self._max = max_bytes
        self._need = -1

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every complete frame (without its size prefix)."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while True:
            if self._need < 0:
                if end - pos < 4:
                    break
                size = int.from_bytes(buf[pos : pos + 4], "big", signed=True)
                if size < 0 or size > self._max:
                    raise FrameTooLarge(f"invalid request size {size} (limit {self._max})")
                self._need = size
                pos += 4
            if end - pos < self._need:
                break
            frames.append(bytes(buf[pos : pos + self._need]))
            pos += self._need
            self._need = -1
        if pos:
            del buf[:pos]
        return frames
