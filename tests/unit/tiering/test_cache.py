from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from streamd.errors import RemoteStorageError
from streamd.tiering.cache import ChunkCache
from streamd.tiering.local_store import LocalStore
from streamd.tiering.store import RangeNotSatisfiable

CHUNK = 10
ENTRY = CHUNK + 4  # chunk bytes + crc32c trailer on disk


class FakeObject:
    """A remote object with per-chunk fetch counting. With a ``gate``, fetches wait for it;
    :meth:`requested` waits (deterministically, no clock) until given chunks were asked for."""

    def __init__(self, data: bytes, chunk_size: int = CHUNK) -> None:
        self.data = data
        self.chunk_size = chunk_size
        self.fetches: Counter[int] = Counter()
        self.gate: asyncio.Event | None = None
        self._asked = asyncio.Condition()

    async def fetch(self, index: int) -> bytes:
        self.fetches[index] += 1
        async with self._asked:
            self._asked.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        return self.data[index * self.chunk_size : (index + 1) * self.chunk_size]

    async def requested(self, *indexes: int) -> None:
        """Return once every chunk in ``indexes`` has been requested (a stuck cache fails the
        test after 5 s instead of hanging it)."""

        async def wait() -> None:
            async with self._asked:
                await self._asked.wait_for(lambda: all(self.fetches[i] for i in indexes))

        await asyncio.wait_for(wait(), 5)


async def settle() -> None:
    """Let every ready task run until it blocks: a yield to the loop, not a clock."""
    for _ in range(5):
        await asyncio.sleep(0)


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


@pytest.mark.parametrize(
    ("start", "end"), [(0, 1), (0, 10), (5, 15), (9, 31), (0, 95), (37, 95), (90, 200), (95, 96)]
)
async def test_get_range_matches_the_object(tmp_path: Path, start: int, end: int) -> None:
    obj = FakeObject(bytes(range(95)))
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK)
    assert await cache.get_range("k", start, end, obj.fetch) == obj.data[start:end]
    assert await cache.get_range("k", start, end, obj.fetch) == obj.data[start:end]
    assert max(obj.fetches.values()) == 1


async def test_empty_and_invalid_ranges(tmp_path: Path) -> None:
    obj = FakeObject(bytes(50))
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK)
    assert await cache.get_range("k", 7, 7, obj.fetch) == b""
    with pytest.raises(ValueError):
        await cache.get_range("k", 8, 7, obj.fetch)
    assert not obj.fetches


async def test_size_bound_is_respected(tmp_path: Path) -> None:
    obj = FakeObject(bytes(1000))
    cache = ChunkCache(tmp_path, max_bytes=3 * ENTRY + 5, chunk_size=CHUNK)
    for i in range(0, 1000, 7):
        assert await cache.get_range("k", i, min(i + 13, 1000), obj.fetch) == bytes(
            min(i + 13, 1000) - i
        )
        assert cache.stats.bytes <= cache.max_bytes
        assert disk_bytes(tmp_path) <= cache.max_bytes
    stats = cache.stats
    assert stats.entries == 3
    assert stats.evictions == 100 - 3
    assert stats.bytes == disk_bytes(tmp_path) == 3 * ENTRY


async def test_eviction_follows_last_access(tmp_path: Path) -> None:
    obj = FakeObject(bytes(range(100)))
    cache = ChunkCache(tmp_path, max_bytes=3 * ENTRY, chunk_size=CHUNK, memory_bytes=0)
    for i in (0, 1, 2):
        await cache.get_chunk("k", i, obj.fetch)
    await cache.get_chunk("k", 0, obj.fetch)  # 0 is now the most recent
    await cache.get_chunk("k", 3, obj.fetch)  # evicts 1, the least recently used
    assert cache.cached_chunks() == [("k", 2), ("k", 0), ("k", 3)]
    await cache.get_chunk("k", 0, obj.fetch)
    assert obj.fetches[0] == 1
    await cache.get_chunk("k", 1, obj.fetch)  # order was 2, 3, 0: evicts 2
    assert obj.fetches[1] == 2
    assert cache.cached_chunks() == [("k", 3), ("k", 0), ("k", 1)]
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.evictions) == (2, 5, 2)


async def test_concurrent_gets_share_one_fetch(tmp_path: Path) -> None:
    obj = FakeObject(bytes(range(100)))
    obj.gate = asyncio.Event()
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK)
    tasks = [asyncio.create_task(cache.get_range("k", 2, 18, obj.fetch)) for _ in range(20)]
    await obj.requested(0, 1)
    await settle()  # every task is now waiting on the two shared loads
    obj.gate.set()
    results = await asyncio.gather(*tasks)
    assert results == [obj.data[2:18]] * 20
    assert obj.fetches == Counter({0: 1, 1: 1})
    assert cache.stats.misses == 2


async def test_cancelled_waiter_does_not_cancel_the_shared_fetch(tmp_path: Path) -> None:
    obj = FakeObject(bytes(range(100)))
    obj.gate = asyncio.Event()
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK)
    first = asyncio.create_task(cache.get_chunk("k", 4, obj.fetch))
    second = asyncio.create_task(cache.get_chunk("k", 4, obj.fetch))
    await obj.requested(4)
    await settle()  # both wait on the one load
    first.cancel()
    obj.gate.set()
    assert await second == obj.data[40:50]
    assert obj.fetches[4] == 1
    assert first.cancelled()


def fails_once(fill: bytes) -> Callable[[int], Awaitable[bytes]]:
    """A fetcher whose first call fails like a store error; later calls return a chunk."""
    calls = 0

    async def flaky(index: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RemoteStorageError("boom")
        return fill * CHUNK

    return flaky


async def test_failed_fetch_is_not_cached_and_is_retried(tmp_path: Path) -> None:
    flaky = fails_once(b"x")
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK)
    with pytest.raises(RemoteStorageError, match="boom"):
        await cache.get_chunk("k", 0, flaky)
    assert cache.stats.entries == 0
    assert await cache.get_chunk("k", 0, flaky) == b"x" * CHUNK


async def test_oversized_fetch_is_an_error(tmp_path: Path) -> None:
    async def too_big(index: int) -> bytes:
        return b"x" * (CHUNK + 1)

    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK)
    with pytest.raises(RemoteStorageError):
        await cache.get_chunk("k", 0, too_big)


async def test_corrupt_cached_chunk_is_refetched_not_served(tmp_path: Path) -> None:
    obj = FakeObject(bytes(range(100)))
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK, memory_bytes=0)
    await cache.get_chunk("k", 1, obj.fetch)
    (path,) = [p for p in tmp_path.iterdir() if p.suffix == ".chunk"]
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert await cache.get_chunk("k", 1, obj.fetch) == obj.data[10:20]
    assert obj.fetches[1] == 2
    (path,) = [p for p in tmp_path.iterdir() if p.suffix == ".chunk"]
    path.unlink()  # vanished behind our back: refetched too
    assert await cache.get_chunk("k", 1, obj.fetch) == obj.data[10:20]
    assert obj.fetches[1] == 3


async def test_chunk_larger_than_the_cache_is_served_uncached(tmp_path: Path) -> None:
    obj = FakeObject(bytes(range(100)))
    cache = ChunkCache(tmp_path, max_bytes=ENTRY - 1, chunk_size=CHUNK)
    assert await cache.get_range("k", 0, 25, obj.fetch) == obj.data[:25]
    assert cache.stats.entries == 0 and disk_bytes(tmp_path) == 0


async def test_keys_do_not_collide_and_invalidate(tmp_path: Path) -> None:
    a, b = FakeObject(b"a" * 30), FakeObject(b"b" * 30)
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK)
    assert await cache.get_range("x/a", 0, 30, a.fetch) == a.data
    assert await cache.get_range("x/b", 0, 30, b.fetch) == b.data
    cache.invalidate("x/a")
    assert [cid[0] for cid in cache.cached_chunks()] == ["x/b"] * 3
    assert disk_bytes(tmp_path) == 3 * ENTRY


def test_stale_files_are_cleared_on_start(tmp_path: Path) -> None:
    (tmp_path / "deadbeef-0000000001.chunk").write_bytes(b"old")
    (tmp_path / "keep.txt").write_bytes(b"not ours")
    cache = ChunkCache(tmp_path, max_bytes=100, chunk_size=CHUNK)
    assert cache.stats.bytes == 0
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


async def test_range_past_a_chunk_aligned_end_reads_as_eof(tmp_path: Path) -> None:
    """A store answers a chunk past the end with RangeNotSatisfiable (S3 416)."""
    data = bytes(range(20))

    async def fetch(index: int) -> bytes:
        if index * CHUNK >= len(data):
            raise RangeNotSatisfiable("past the end")
        return data[index * CHUNK : (index + 1) * CHUNK]

    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK)
    assert await cache.get_range("k", 5, 35, fetch) == data[5:]
    with pytest.raises(RangeNotSatisfiable):
        await cache.get_range("k", 25, 35, fetch)


async def test_against_a_real_store(tmp_path: Path) -> None:
    """The cache over LocalStore ranged reads returns exactly the object's bytes."""
    store = LocalStore(tmp_path / "objects")
    blob = bytes(range(256)) * 9
    await store.put("a/seg.log", blob)
    cache = ChunkCache(tmp_path / "cache", max_bytes=4 * (64 + 4), chunk_size=64)

    async def fetch(index: int) -> bytes:
        return await store.get("a/seg.log", byte_range=(index * 64, (index + 1) * 64))

    for start in range(0, len(blob), 97):
        assert (
            await cache.get_range("a/seg.log", start, start + 150, fetch)
            == blob[start : start + 150]
        )


async def test_hot_chunks_are_served_from_memory_until_invalidated(tmp_path: Path) -> None:
    obj = FakeObject(bytes(range(35)))
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK, memory_bytes=2 * CHUNK)
    assert await cache.get_range("k", 0, 5, obj.fetch) == obj.data[:5]
    for path in tmp_path.iterdir():
        path.unlink()
    assert await cache.get_range("k", 5, 10, obj.fetch) == obj.data[5:10]
    assert obj.fetches[0] == 1, "a hot chunk must not be fetched again"
    cache.invalidate("k")
    assert await cache.get_range("k", 0, 10, obj.fetch) == obj.data[:10]
    assert obj.fetches[0] == 2


async def test_a_range_loads_its_missing_chunks_concurrently(tmp_path: Path) -> None:
    obj = FakeObject(bytes(range(100)))
    obj.gate = asyncio.Event()
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK)
    task = asyncio.create_task(cache.get_range("k", 5, 45, obj.fetch))
    # Sequential loads would stop at chunk 0 (the gate is closed): this times out then.
    await obj.requested(0, 1, 2, 3, 4)
    assert sorted(obj.fetches) == [0, 1, 2, 3, 4], "every chunk's GET should be in flight at once"
    obj.gate.set()
    assert await task == obj.data[5:45]


async def test_prefetch_starts_a_load_only_for_missing_chunks(tmp_path: Path) -> None:
    obj = FakeObject(bytes(range(100)))
    obj.gate = asyncio.Event()
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK, memory_bytes=0)
    assert cache.prefetch("k", 3, obj.fetch)
    assert not cache.prefetch("k", 3, obj.fetch), "already loading"
    assert cache.loading == 1
    waiter = asyncio.create_task(cache.get_chunk("k", 3, obj.fetch))
    await obj.requested(3)
    obj.gate.set()
    assert await waiter == obj.data[30:40]
    await cache.idle()
    assert cache.loading == 0
    assert not cache.prefetch("k", 3, obj.fetch), "already cached on disk"
    assert obj.fetches == Counter({3: 1})


async def test_a_failed_prefetch_is_retried_by_the_next_read(tmp_path: Path) -> None:
    flaky = fails_once(b"y")
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK)
    assert cache.prefetch("k", 0, flaky)
    await cache.idle()
    assert cache.loading == 0 and cache.stats.entries == 0
    assert await cache.get_chunk("k", 0, flaky) == b"y" * CHUNK


async def test_memory_copies_are_bounded_in_bytes(tmp_path: Path) -> None:
    obj = FakeObject(bytes(range(100)))
    cache = ChunkCache(tmp_path, max_bytes=1000, chunk_size=CHUNK, memory_bytes=2 * CHUNK)
    assert await cache.get_range("k", 0, 30, obj.fetch) == obj.data[:30]
    for path in tmp_path.iterdir():
        path.unlink()  # from here on a chunk not in memory must be fetched again
    assert await cache.get_range("k", 10, 30, obj.fetch) == obj.data[10:30]
    assert obj.fetches == Counter({0: 1, 1: 1, 2: 1}), "chunks 1 and 2 are still in memory"
    assert await cache.get_range("k", 0, 10, obj.fetch) == obj.data[:10]
    assert obj.fetches[0] == 2, "chunk 0 left memory when chunk 2 arrived"


async def test_concurrent_loads_never_exceed_the_disk_bound(tmp_path: Path) -> None:
    obj = FakeObject(bytes(range(100)))
    obj.gate = asyncio.Event()
    cache = ChunkCache(tmp_path, max_bytes=2 * ENTRY, chunk_size=CHUNK)
    for i in range(8):
        cache.prefetch("k", i, obj.fetch)
    await obj.requested(*range(8))  # all eight loads are under way together
    obj.gate.set()
    await cache.idle()
    assert disk_bytes(tmp_path) <= 2 * ENTRY
    assert cache.stats.bytes <= 2 * ENTRY
    assert await cache.get_range("k", 0, 80, obj.fetch) == obj.data[:80]
