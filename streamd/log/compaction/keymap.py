"""The cleaner's key -> latest offset map, bounded in memory (``log.cleaner.dedupe_buffer_bytes``).

Kafka's ``SkimpyOffsetMap`` stores a 16-byte MD5 of each key in a fixed array. Here a dict is
the fastest structure Python has; its memory is bounded by counting entries: ``ENTRY_BYTES`` is
what one entry costs (measured with tracemalloc at 200k entries: 125-135 bytes, dict slot, key
object and offset int; rounded up to cover a dict that has just doubled its table). Keys shorter
than 16 bytes are stored as they are, longer ones as their 16-byte BLAKE2b digest, so no key
costs more than a digest and two keys can only share an entry through a 128-bit collision (the
same odds Kafka accepts with MD5). A short key can never equal a digest: their lengths differ.

When the map is full, building stops at a batch boundary: the pass cleans what it has mapped
(``latest_offset``), and the next pass continues from there, as in Kafka.
"""

from __future__ import annotations

from hashlib import blake2b

ENTRY_BYTES = 160
DIGEST_FROM = 16


def slot(key: bytes) -> bytes:
    return key if len(key) < DIGEST_FROM else blake2b(key, digest_size=16).digest()


class KeyMap:
    def __init__(self, memory_bytes: int) -> None:
        self.capacity = max(1, memory_bytes // ENTRY_BYTES)
        self.offsets: dict[bytes, int] = {}
        self.latest_offset = -1
        """Every record at or below this offset has been considered (mapped or skipped)."""

    def __len__(self) -> int:
        return len(self.offsets)

    def put(self, key: bytes, offset: int) -> bool:
        """Record ``offset`` as the latest of ``key``; False (nothing stored) when the map is
        full and ``key`` is new."""
        s = slot(key)
        offsets = self.offsets
        if s not in offsets and len(offsets) >= self.capacity:
            return False
        offsets[s] = offset
        return True

    def get(self, key: bytes) -> int:
        """The latest offset of ``key``, -1 if it is not in the map."""
        return self.offsets.get(slot(key), -1)

    @property
    def utilization(self) -> float:
        return len(self.offsets) / self.capacity
