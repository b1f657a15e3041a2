"""Bounded on-disk chunk cache for remote reads (LRU by last access).

Remote objects are read in fixed-size chunks (``chunk_size``, 1 MiB by default): chunk ``i`` of
an object covers bytes ``[i*chunk_size, (i+1)*chunk_size)``; only the last chunk may be shorter.
Each cached chunk is one file ``<sha256(key)[:32]>-<i:010d>.chunk`` in the cache directory,
holding the chunk bytes followed by their CRC32C (4 bytes, big-endian): a chunk damaged on
local disk is detected, dropped and fetched again, never served.

The index (which chunks exist, their sizes, access order) lives in memory; files found in the
directory at start-up are removed, since nothing vouches for them. The bytes on disk never exceed
``max_bytes``: room is made (least recently used chunks evicted) before a new chunk is written,
and a chunk larger than the whole cache is returned without being cached.

The most recently used chunks are also kept in memory, up to ``memory_bytes`` (LRU): a consumer
replaying history reads each chunk in several fetches, and those should not each re-read and
re-checksum the chunk file; chunks loaded ahead of a reader wait there too. The memory copies do
not count against ``max_bytes`` (disk).

Concurrency: concurrent ``get_range`` calls for the same missing chunk share one fetch (the
first caller's request runs as its own task, so cancelling one waiter does not cancel the fetch
for the others). All file I/O runs in worker threads; the index is only touched on the event
loop, under a lock that also makes :attr:`stats` safe to read from other threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import struct
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from streamd.errors import RemoteStorageError
from streamd.tiering.checksum import crc32c
from streamd.tiering.store import RangeNotSatisfiable

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1 << 20
_CRC = struct.Struct(">I")
_SUFFIX = ".chunk"

ChunkId = tuple[str, int]


@dataclass(frozen=True, kw_only=True)
class CacheStats:
    hits: int
    misses: int
    bytes: int
    entries: int
    evictions: int


class ChunkCache:
    """LRU cache of object chunks on local disk, bounded by ``max_bytes`` (file sizes)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        memory_bytes: int = 64 << 20,
    ) -> None:
        if chunk_size <= 0 or max_bytes < 0:
            raise ValueError("chunk_size must be > 0 and max_bytes >= 0")
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        for stale in self._dir.iterdir():
            if stale.name.endswith(_SUFFIX) or stale.name.startswith(".tmp-"):
                stale.unlink(missing_ok=True)
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
        self._index: OrderedDict[ChunkId, int] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict[ChunkId, asyncio.Task[bytes]] = {}
        self._hits = self._misses = self._evictions = 0
        self._hot: OrderedDict[ChunkId, bytes] = OrderedDict()
        self._hot_bytes = 0
        self._hot_max = max(0, memory_bytes)

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                bytes=self._bytes,
                entries=len(self._index),
                evictions=self._evictions,
            )

    def cached_chunks(self) -> list[ChunkId]:
        """Cached chunks from least to most recently used (for tests and introspection)."""
        with self._lock:
            return list(self._index)

    async def get_range(
        self,
        key: str,
        start: int,
        end: int,
        fetch_chunk: Callable[[int], Awaitable[bytes]],
    ) -> bytes | memoryview:
        """Bytes ``[start, end)`` of object ``key``, shorter if the object ends first.

        A range inside one chunk comes back as a read-only view of the cached chunk (no copy);
        a range over several chunks as new bytes.

        ``fetch_chunk(i)`` must return chunk ``i`` of the object from the store (e.g. a ranged
        GET of ``[i*chunk_size, (i+1)*chunk_size)``): exactly ``chunk_size`` bytes, or fewer
        for the last chunk; a chunk past the end may come back empty or raise
        :class:`RangeNotSatisfiable` (what a store does), both read as end of object.
        """
        if start < 0 or end < start:
            raise ValueError(f"invalid range [{start}, {end})")
        if start == end:
            return b""
        cs = self.chunk_size
        first, last = start // cs, (end - 1) // cs
        if first == last:
            chunk = await self.get_chunk(key, first, fetch_chunk)
            return memoryview(chunk)[start - first * cs : end - first * cs]
        # All missing chunks of the range load concurrently (parallel GETs).
        chunks = await asyncio.gather(
            *(self.get_chunk(key, i, fetch_chunk) for i in range(first, last + 1)),
            return_exceptions=True,
        )
        parts: list[memoryview] = []
        for index, got in zip(range(first, last + 1), chunks, strict=True):
            if isinstance(got, RangeNotSatisfiable) and index != first:
                break  # the previous chunk was full and ended the object
            if isinstance(got, BaseException):
                raise got
            chunk = got
            lo = start - index * cs if index == first else 0
            hi = end - index * cs if index == last else len(chunk)
            parts.append(memoryview(chunk)[lo:hi])
            if len(chunk) < cs:
                break
        return b"".join(parts)

    def prefetch(
        self, key: str, index: int, fetch_chunk: Callable[[int], Awaitable[bytes]]
    ) -> bool:
        """Start loading chunk ``index`` of ``key`` unless it is cached or already loading.

        Returns whether a load was started. The load runs as its own task (errors are logged
        by the caller's ``fetch_chunk`` or surface on the next :meth:`get_chunk`).
        """
        cid = (key, index)
        with self._lock:
            if cid in self._hot or cid in self._index:
                return False
        if cid in self._inflight:
            return False
        with self._lock:
            self._misses += 1
        task = asyncio.ensure_future(self._load(cid, fetch_chunk))
        self._inflight[cid] = task
        task.add_done_callback(self._prefetch_done(cid))
        return True

    @property
    def loading(self) -> int:
        """Chunk loads in flight."""
        return len(self._inflight)

    async def idle(self) -> None:
        """Wait until no chunk load is in flight (their errors are the loaders' business)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)
            await asyncio.sleep(0)  # let the loads' done-callbacks forget them

    async def cancel_loads(self) -> None:
        """Cancel every chunk load in flight (shutdown)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _prefetch_done(self, cid: ChunkId) -> Callable[[asyncio.Task[bytes]], None]:
        def done(task: asyncio.Task[bytes]) -> None:
            self._inflight.pop(cid, None)
            if not task.cancelled() and task.exception() is not None:
                log.debug("prefetch of chunk %d of %r failed: %s", cid[1], cid[0], task.exception())

        return done

    async def get_chunk(
        self, key: str, index: int, fetch_chunk: Callable[[int], Awaitable[bytes]]
    ) -> bytes:
        cid = (key, index)
        with self._lock:
            size = self._index.get(cid)
            if size is not None:
                self._index.move_to_end(cid)
            hot = self._hot.get(cid)
            if hot is not None:
                self._hot.move_to_end(cid)
                self._hits += 1
                return hot
        if size is not None:
            data = await asyncio.to_thread(self._read, cid)
            if data is not None:
                with self._lock:
                    self._hits += 1
                self._remember(cid, data)
                return data
            self._drop(cid)
        task = self._inflight.get(cid)
        if task is None:
            with self._lock:
                self._misses += 1
            task = asyncio.ensure_future(self._load(cid, fetch_chunk))
            self._inflight[cid] = task
            task.add_done_callback(lambda _t: self._inflight.pop(cid, None))
        return await asyncio.shield(task)

    def _remember(self, cid: ChunkId, data: bytes) -> None:
        if len(data) > self._hot_max:
            return
        with self._lock:
            old = self._hot.pop(cid, None)
            if old is not None:
                self._hot_bytes -= len(old)
            self._hot[cid] = data
            self._hot_bytes += len(data)
            while self._hot_bytes > self._hot_max:
                _, evicted = self._hot.popitem(last=False)
                self._hot_bytes -= len(evicted)

    def invalidate(self, key: str) -> None:
        """Forget every chunk of ``key`` (e.g. after its object was deleted)."""
        with self._lock:
            for cid in [c for c in self._hot if c[0] == key]:
                self._hot_bytes -= len(self._hot.pop(cid))
            victims = [cid for cid in self._index if cid[0] == key]
        for cid in victims:
            self._drop(cid)

    async def _load(self, cid: ChunkId, fetch_chunk: Callable[[int], Awaitable[bytes]]) -> bytes:
        data = await fetch_chunk(cid[1])
        if len(data) > self.chunk_size:
            raise RemoteStorageError(
                f"chunk {cid[1]} of {cid[0]!r} has {len(data)} bytes, more than {self.chunk_size}"
            )
        self._remember(cid, data)
        size = len(data) + _CRC.size
        if size > self.max_bytes:
            return data
        with self._lock:
            victims = []
            while self._index and self._bytes + size > self.max_bytes:
                victim, victim_size = self._index.popitem(last=False)
                self._bytes -= victim_size
                self._evictions += 1
                victims.append(victim)
            # Room taken by chunks still being written cannot be freed: this one then stays
            # in memory only (disk use never exceeds the bound, even with concurrent loads).
            fits = self._bytes + size <= self.max_bytes
            if fits:
                self._bytes += size  # reserved before the write
        if not fits:
            if victims:
                await asyncio.to_thread(self._unlink, victims)
            return data
        try:
            await asyncio.to_thread(self._write, cid, data, victims)
        except OSError as exc:
            with self._lock:
                self._bytes -= size
            log.warning("could not cache chunk %d of %r: %s", cid[1], cid[0], exc)
            return data
        with self._lock:
            self._index[cid] = size
        return data

    def _drop(self, cid: ChunkId) -> None:
        with self._lock:
            hot = self._hot.pop(cid, None)
            if hot is not None:
                self._hot_bytes -= len(hot)
            size = self._index.pop(cid, None)
            if size is not None:
                self._bytes -= size
        if size is not None:
            self._path(cid).unlink(missing_ok=True)

    def _path(self, cid: ChunkId) -> Path:
        digest = hashlib.sha256(cid[0].encode()).hexdigest()[:32]
        return self._dir / f"{digest}-{cid[1]:010d}{_SUFFIX}"

    def _read(self, cid: ChunkId) -> bytes | None:
        try:
            raw = self._path(cid).read_bytes()
        except FileNotFoundError:
            return None
        data, trailer = raw[: -_CRC.size], raw[-_CRC.size :]
        if len(raw) < _CRC.size or _CRC.unpack(trailer)[0] != crc32c(data):
            log.warning("cached chunk %d of %r is corrupt; fetching it again", cid[1], cid[0])
            return None
        return data

    def _unlink(self, victims: list[ChunkId]) -> None:
        for victim in victims:
            self._path(victim).unlink(missing_ok=True)

    def _write(self, cid: ChunkId, data: bytes, victims: list[ChunkId]) -> None:
        self._unlink(victims)
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.write(_CRC.pack(crc32c(data)))
            os.replace(tmp, self._path(cid))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
