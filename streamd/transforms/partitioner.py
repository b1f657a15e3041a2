"""Kafka's default partitioner for keyed records: ``toPositive(murmur2(key)) % partitions``.

The same function the Java client's ``BuiltInPartitioner`` (and librdkafka's
``murmur2_random``, kafka-python, aiokafka) uses, so a transform's keyed output lands where any
Kafka producer would have put it. Keys repeat in most topics, so results are cached (bounded).
"""

from __future__ import annotations

SEED = 0x9747B28C
M = 0x5BD1E995
MASK = 0xFFFFFFFF
CACHE_MAX = 65536


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` as an unsigned 32-bit value (Java's result & 0xffffffff)."""
    length = len(data)
    h = (SEED ^ length) & MASK
    end = length & ~3
    for i in range(0, end, 4):
        k = (data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24) * M & MASK
        k ^= k >> 24
        h = (h * M & MASK) ^ (k * M & MASK)
    extra = length & 3
    if extra == 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = h * M & MASK
    h ^= h >> 13
    h = h * M & MASK
    h ^= h >> 15
    return h


class KeyPartitioner:
    """``partition(key, count)``: where Kafka's default partitioner puts ``key``."""

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def partition(self, key: bytes, count: int) -> int:
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= CACHE_MAX:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return h % count
