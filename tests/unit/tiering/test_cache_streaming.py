"""Streaming chunk loads in the chunk cache: published bytes are served before the chunk is
complete, unpublished ones never; ``get_ready`` answers what has arrived; the cache's work stays
off the event loop's default executor (the log's fsyncs use it)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from streamd.errors import RemoteStorageError
from streamd.tiering.cache import ChunkCache, ChunkSink, StreamingFetch

CHUNK = 100


class StreamedObject:
    """A remote object whose chunk loads stream: each load allocates the chunk, publishes
    ``first`` bytes, then waits for ``gate`` before the rest (or fails with ``fail``)."""

    def __init__(self, data: bytes, first: int) -> None:
        self.data = data
        self.first = first
        self.gate = asyncio.Event()
        self.fail: Exception | None = None
        self.loads: Counter[int] = Counter()
        self.published = asyncio.Event()

    async def load(self, index: int, sink: ChunkSink) -> bytearray:
        self.loads[index] += 1
        chunk = self.data[index * CHUNK : (index + 1) * CHUNK]
        buf = sink.allocate(len(chunk))
        buf[: self.first] = chunk[: self.first]
        sink.publish(min(self.first, len(chunk)))
        self.published.set()
        await self.gate.wait()
        buf[self.first :] = b"\xee" * (len(chunk) - self.first)  # arrived, not yet checked
        if self.fail is not None:
            raise self.fail
        buf[self.first :] = chunk[self.first :]
        sink.publish(len(chunk))
        return buf

    @property
    def fetch(self) -> StreamingFetch:
        return StreamingFetch(self.load)


async def wait_published(obj: StreamedObject) -> None:
    await asyncio.wait_for(obj.published.wait(), 5)


async def test_published_bytes_are_served_before_the_chunk_is_complete(tmp_path: Path) -> None:
    obj = StreamedObject(bytes(range(250)), first=40)
    cache = ChunkCache(tmp_path, max_bytes=10_000, chunk_size=CHUNK)
    early = await asyncio.wait_for(cache.get_range("k", 5, 40, obj.fetch), 5)
    assert early == obj.data[5:40], "the published head of a loading chunk is served at once"
    late = asyncio.create_task(cache.get_range("k", 30, 60, obj.fetch))
    await asyncio.sleep(0)
    assert not late.done(), "bytes past what was published must wait"
    obj.gate.set()
    assert await late == obj.data[30:60]
    assert obj.loads == Counter({0: 1}), "both reads share the one load"
    await cache.idle()
    assert cache.cached_chunks() == [("k", 0)], "the chunk's file is written after its readers"


async def test_bytes_that_were_never_published_are_never_served(tmp_path: Path) -> None:
    obj = StreamedObject(bytes(range(100)), first=40)
    obj.fail = RemoteStorageError("block 1 does not match its checksum")
    cache = ChunkCache(tmp_path, max_bytes=10_000, chunk_size=CHUNK)
    assert await cache.get_range("k", 0, 40, obj.fetch) == obj.data[:40]
    waiter = asyncio.create_task(cache.get_range("k", 0, 50, obj.fetch))
    await asyncio.sleep(0)
    obj.gate.set()
    with pytest.raises(RemoteStorageError, match="checksum"):
        await waiter
    assert cache.cached_chunks() == [] and cache.stats.entries == 0
    obj.fail = None
    obj.gate = asyncio.Event()
    obj.gate.set()
    assert await cache.get_range("k", 0, 100, obj.fetch) == obj.data, "loaded again, whole"
    assert obj.loads[0] == 2


async def test_get_ready_answers_what_has_arrived_without_waiting_for_the_rest(
    tmp_path: Path,
) -> None:
    obj = StreamedObject(bytes(range(200)), first=60)
    cache = ChunkCache(tmp_path, max_bytes=10_000, chunk_size=CHUNK)
    got = await asyncio.wait_for(cache.get_ready("k", 10, 200, 20, obj.fetch), 5)
    assert got == obj.data[10:60], "at least 20 bytes, then exactly what is published"
    waiter = asyncio.create_task(cache.get_ready("k", 10, 200, 80, obj.fetch))
    await asyncio.sleep(0)
    assert not waiter.done(), "the minimum is waited for"
    obj.gate.set()
    got = await waiter
    assert len(got) >= 70 and got == obj.data[10 : 10 + len(got)]
    assert await cache.get_ready("k", 10, 200, 20, obj.fetch) == obj.data[10:100], (
        "chunk 1 was never asked for: not here"
    )
    assert cache.prefetch("k", 1, obj.fetch)
    await cache.idle()
    assert await cache.get_ready("k", 10, 200, 20, obj.fetch) == obj.data[10:200], (
        "cached chunks are all here: the whole range"
    )


async def test_get_ready_stops_at_the_object_end(tmp_path: Path) -> None:
    obj = StreamedObject(bytes(range(130)), first=130)
    obj.gate.set()
    cache = ChunkCache(tmp_path, max_bytes=10_000, chunk_size=CHUNK)
    assert await cache.get_ready("k", 90, 400, 120, obj.fetch) == obj.data[90:]


async def test_unread_read_ahead_is_evicted_from_memory_last(tmp_path: Path) -> None:
    obj = StreamedObject(bytes(range(250)) * 2, first=CHUNK)
    obj.gate.set()
    cache = ChunkCache(tmp_path, max_bytes=0, chunk_size=CHUNK, memory_bytes=2 * CHUNK)
    await cache.get_range("k", 0, 10, obj.fetch)  # chunk 0: read
    assert cache.prefetch("k", 1, obj.fetch)  # chunk 1: ahead of its reader
    await cache.idle()
    assert cache.ahead_bytes == CHUNK
    await cache.get_range("k", 200, 210, obj.fetch)  # chunk 2 needs room: 0 goes, not 1
    await cache.get_range("k", 100, 110, obj.fetch)
    assert obj.loads == Counter({0: 1, 1: 1, 2: 1}), "the prefetched chunk was still in memory"
    assert cache.ahead_bytes == 0, "read now: no longer ahead"


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_cache_work_stays_off_the_default_executor(tmp_path: Path) -> None:
    """The log flushes (fsync) on the loop's default executor: a replay's file reads, writes
    and checksums must not queue in front of them."""
    default = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(default)
    obj = StreamedObject(bytes(range(250)), first=CHUNK)
    obj.gate.set()
    cache = ChunkCache(tmp_path, max_bytes=10_000, chunk_size=CHUNK, memory_bytes=0)
    assert await cache.get_range("k", 0, 250, obj.fetch) == obj.data
    await cache.idle()
    assert await cache.get_range("k", 0, 250, obj.fetch) == obj.data  # from the files
    assert await cache.run(sum, [1, 2]) == 3
    assert obj.loads == Counter({0: 1, 1: 1, 2: 1})
    assert default.submitted == 0
    cache.close()


async def test_a_buffer_is_reused_only_once_nothing_refers_to_it(tmp_path: Path) -> None:
    """Chunk buffers the cache let go of are reused (fresh memory costs page faults), but
    never while a view of them (a response still being sent) exists."""
    data = bytes(range(256)) * 4  # chunks 0..9 of distinct bytes
    obj = StreamedObject(data, first=CHUNK)
    obj.gate.set()
    cache = ChunkCache(tmp_path, max_bytes=0, chunk_size=CHUNK, memory_bytes=CHUNK)
    held = await cache.get_range("k", 0, 50, obj.fetch)  # a response still holding chunk 0
    await cache.get_range("k", 100, 150, obj.fetch)  # chunk 0 leaves memory: let go of
    await cache.get_range("k", 200, 250, obj.fetch)  # needs a buffer: chunk 0's is in use
    assert cache.reused_buffers == 0
    assert held == data[:50], "a view of a buffer in use never sees other bytes"
    del held
    got = await cache.get_range("k", 300, 350, obj.fetch)
    assert cache.reused_buffers >= 1, "a buffer nothing refers to is reused"
    assert got == data[300:350]
    assert await cache.get_range("k", 400, 500, obj.fetch) == data[400:500]
