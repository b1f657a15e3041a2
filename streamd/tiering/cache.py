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

Streaming loads: a fetcher wrapped in :class:`StreamingFetch` fills a :class:`ChunkSink` as the
bytes arrive and publishes how much of the chunk is final (checked by the fetcher: the remote
reader verifies every checksum block before it publishes it). ``get_range`` answers a range of
such a chunk as soon as its bytes are published, not when the whole chunk has arrived, and the
chunk's cache file is written afterwards without holding readers. Plain fetchers (a callable
returning the chunk) keep the simple contract: the load, file included, completes first.

Worker threads: the cache's file I/O and the remote reader's CPU work (checksums of large
reads) run on the cache's own small thread pool (:meth:`run`), not on the event loop's default
executor, which the log's fsyncs use: a replay from the bucket must not queue in front of a
producer's flush. Cache files are written by one thread, and a chunk whose write would queue
behind more than ``write_backlog_bytes`` of others is kept in memory only.

Memory: chunks loaded ahead of a reader (:meth:`prefetch`) and not read yet are evicted from
the memory tier only after every chunk that was read (evicting one wastes its GET);
:attr:`ahead_bytes` says how much read-ahead holds. Chunk buffers the cache lets go of are
reused for later chunks once nothing refers to them any more (see :meth:`_new_buffer`): fresh
memory costs page faults, more than the copy into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import struct
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from streamd.errors import RemoteStorageError
from streamd.tiering.checksum import crc32c
from streamd.tiering.store import RangeNotSatisfiable

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1 << 20
_CRC = struct.Struct(">I")
_SUFFIX = ".chunk"

ChunkId = tuple[str, int]
Chunk = bytes | bytearray
SPARE_BUFFERS = 4
P = ParamSpec("P")
T = TypeVar("T")
IO_THREADS = 2


class ChunkSink:
    """A chunk being filled by a streaming fetch: ``buffer[:ready]`` is final and may be
    served while the rest is still arriving.

    The fetcher calls :meth:`allocate` once it knows the chunk's size, writes into ``buffer``
    in order and calls :meth:`publish` with the length that is final (checked). The buffer is
    allocated once and never resized, so views handed to readers stay valid; bytes below
    ``ready`` are never written again."""

    __slots__ = ("buffer", "size", "ready", "read", "_waiters", "_closed", "_new_buffer")

    def __init__(self, new_buffer: Callable[[int], bytearray] = bytearray) -> None:
        self._new_buffer = new_buffer
        self.buffer: Chunk = b""
        self.size: int | None = None
        self.ready = 0
        self.read = False  # a reader was served from the sink: the chunk is not read-ahead
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._closed = False

    def allocate(self, size: int) -> bytearray:
        buffer = self._new_buffer(size)
        self.buffer, self.size = buffer, size
        self._wake()
        return buffer

    def publish(self, ready: int) -> None:
        assert self.size is not None and self.ready <= ready <= self.size
        self.ready = ready
        self._wake()

    def finish(self, data: Chunk) -> None:
        """The whole chunk at once (a fetch that could not stream)."""
        self.buffer, self.size, self.ready = data, len(data), len(data)
        self._wake()

    def close(self) -> None:
        """The load ended (done or failed): waiters still short of their bytes give up."""
        self._closed = True
        self._wake()

    def available(self, end: int) -> bool:
        """Whether ``buffer[:end]`` (clipped to the chunk) is final."""
        return self.size is not None and self.ready >= min(end, self.size)

    async def wait(self, end: int) -> bool:
        """Wait until ``buffer[:end]`` is final (True) or the load ended without it (False;
        the load's own result or error then tells the rest)."""
        while not self.available(end):
            if self._closed:
                return False
            future = asyncio.get_running_loop().create_future()
            entry = (end, future)
            self._waiters.append(entry)
            try:
                await future
            finally:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        return True

    def _wake(self) -> None:
        keep = []
        for end, future in self._waiters:
            if self._closed or self.available(end):
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((end, future))
        self._waiters = keep


BACKGROUND_NICE = 10


def _background_thread() -> None:
    """The cache's threads run at a lower CPU priority than the event loop and the log's
    flush threads (Linux applies ``setpriority`` to a thread id): on a busy machine a replay's
    checksums and cache files wait, a producer's fsync and the loop do not."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


@dataclass(frozen=True)
class StreamingFetch:
    """A chunk fetcher that fills a :class:`ChunkSink` as the bytes arrive and returns the
    whole chunk (usually the sink's buffer) when done."""

    fetch: Callable[[int, ChunkSink], Awaitable[Chunk]]


Fetcher = Callable[[int], Awaitable[Chunk]] | StreamingFetch


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
        write_backlog_bytes: int = 64 << 20,
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
        self._inflight: dict[ChunkId, asyncio.Task[Chunk]] = {}
        self._partial: dict[ChunkId, ChunkSink] = {}
        self._hits = self._misses = self._evictions = 0
        self._hot: OrderedDict[ChunkId, Chunk] = OrderedDict()
        self._hot_bytes = 0
        self._hot_max = max(0, memory_bytes)
        self._unread: dict[ChunkId, int] = {}  # loaded ahead, not read yet: their sizes
        self._unread_bytes = 0
        self._fetching = 0
        self._write_backlog = 0
        self._writing: dict[ChunkId, Chunk] = {}  # written behind: still servable from here
        self._spare: list[bytearray] = []  # chunk buffers the cache let go of (maybe in use)
        self.reused_buffers = 0
        self._write_backlog_max = write_backlog_bytes
        self._io = ThreadPoolExecutor(
            IO_THREADS, thread_name_prefix="streamd-cache", initializer=_background_thread
        )
        self._writer = ThreadPoolExecutor(
            1, thread_name_prefix="streamd-cache-write", initializer=_background_thread
        )

    @property
    def memory_bytes(self) -> int:
        return self._hot_max

    @property
    def ahead_bytes(self) -> int:
        """Bytes of chunks being loaded plus chunks loaded ahead and not read yet: what
        read-ahead holds in memory."""
        return self._fetching * self.chunk_size + self._unread_bytes

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` on the cache's worker threads (not the loop's default executor)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        """Stop the worker threads (after :meth:`cancel_loads`)."""
        self._io.shutdown(wait=False, cancel_futures=True)
        self._writer.shutdown(wait=False, cancel_futures=True)

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
        fetch_chunk: Fetcher,
    ) -> bytes | memoryview:
        """Bytes ``[start, end)`` of object ``key``, shorter if the object ends first.

        A range inside one chunk comes back as a read-only view of the cached chunk (no copy);
        a range over several chunks as new bytes.

        ``fetch_chunk(i)`` must return chunk ``i`` of the object from the store (e.g. a ranged
        GET of ``[i*chunk_size, (i+1)*chunk_size)``): exactly ``chunk_size`` bytes, or fewer
        for the last chunk; a chunk past the end may come back empty or raise
        :class:`RangeNotSatisfiable` (what a store does), both read as end of object. A
        :class:`StreamingFetch` does the same through a sink, and a range of its chunk is
        answered as soon as its bytes are published.
        """
        if start < 0 or end < start:
            raise ValueError(f"invalid range [{start}, {end})")
        if start == end:
            return b""
        cs = self.chunk_size
        first, last = start // cs, (end - 1) // cs
        if first == last:
            return await self._piece(key, first, start - first * cs, end - first * cs, fetch_chunk)
        # All missing chunks of the range load concurrently (parallel GETs).
        spans = [
            (i, start - i * cs if i == first else 0, end - i * cs if i == last else cs)
            for i in range(first, last + 1)
        ]
        pieces = await asyncio.gather(
            *(self._piece(key, i, lo, hi, fetch_chunk) for i, lo, hi in spans),
            return_exceptions=True,
        )
        parts: list[bytes | memoryview] = []
        for (index, lo, hi), got in zip(spans, pieces, strict=True):
            if isinstance(got, RangeNotSatisfiable) and index != first:
                break  # the previous chunk was full and ended the object
            if isinstance(got, BaseException):
                raise got
            parts.append(got)
            if len(got) < hi - lo:
                break  # this chunk ended the object
        return b"".join(parts)

    async def get_ready(
        self, key: str, start: int, end: int, need: int, fetch_chunk: Fetcher
    ) -> bytes | memoryview:
        """Bytes from ``start``: at least to ``need`` (waiting for them, shorter only where the
        object ends), then as far toward ``end`` as is already here (cached, or published by
        a streaming load), without waiting for more. A reader that wants up to ``end`` but
        is content with what has arrived so far is answered sooner; it asks again for the
        rest."""
        if not start <= need <= end:
            raise ValueError(f"invalid range [{start}, {need}, {end})")
        head = await self.get_range(key, start, need, fetch_chunk)
        if len(head) < need - start:
            return head
        reach = need
        cs = self.chunk_size
        while reach < end:
            index = reach // cs
            have = self._available((key, index))
            if have <= reach - index * cs:
                break
            reach = min(end, index * cs + have)
            if have < cs:
                break  # the chunk is still loading (or ends the object)
        if reach == need:
            return head
        return await self.get_range(key, start, reach, fetch_chunk)

    def _available(self, cid: ChunkId) -> int:
        """How many leading bytes of chunk ``cid`` can be had without a GET."""
        with self._lock:
            hot = self._hot.get(cid) or self._writing.get(cid)
            if hot is not None:
                return len(hot)
            size = self._index.get(cid)
            if size is not None:
                return size - _CRC.size
        sink = self._partial.get(cid)
        return sink.ready if sink is not None and sink.size is not None else 0

    async def _piece(
        self, key: str, index: int, lo: int, hi: int, fetch_chunk: Fetcher
    ) -> bytes | memoryview:
        """Bytes ``[lo, hi)`` of chunk ``index`` (fewer where the chunk ends), as a view."""
        cid = (key, index)
        if isinstance(fetch_chunk, StreamingFetch) and not self._has(cid):
            task = self._start(cid, fetch_chunk)
            sink = self._partial.get(cid)
            if sink is not None and await sink.wait(hi):  # else the load ended: its result
                sink.read = True
                self._read_now(cid)
                return memoryview(sink.buffer)[lo:hi].toreadonly()
            chunk = await asyncio.shield(task)
            return memoryview(chunk)[lo:hi].toreadonly()
        chunk = await self.get_chunk(key, index, fetch_chunk)
        return memoryview(chunk)[lo:hi].toreadonly()

    def _has(self, cid: ChunkId) -> bool:
        with self._lock:
            return cid in self._hot or cid in self._index or cid in self._writing

    def _start(
        self, cid: ChunkId, fetch_chunk: Fetcher, *, ahead: bool = False
    ) -> asyncio.Task[Chunk]:
        """The load of ``cid`` in flight, started now if there is none (its sink, for a
        streaming fetch, is registered before this returns)."""
        task = self._inflight.get(cid)
        if task is not None:
            return task
        with self._lock:
            self._misses += 1
        sink = None
        if isinstance(fetch_chunk, StreamingFetch):
            sink = self._partial[cid] = ChunkSink(self._new_buffer)
        task = asyncio.ensure_future(self._load(cid, fetch_chunk, sink, ahead=ahead))
        self._inflight[cid] = task
        task.add_done_callback(self._load_done(cid, sink))
        return task

    def _load_done(
        self, cid: ChunkId, sink: ChunkSink | None
    ) -> Callable[[asyncio.Task[Chunk]], None]:
        def done(task: asyncio.Task[Chunk]) -> None:
            if self._inflight.get(cid) is task:
                del self._inflight[cid]
            if sink is not None:
                if self._partial.get(cid) is sink:
                    del self._partial[cid]
                sink.close()

        return done

    def _read_now(self, cid: ChunkId) -> None:
        """A reader used ``cid``: it no longer counts as read-ahead."""
        with self._lock:
            self._forget_unread(cid)

    def prefetch(self, key: str, index: int, fetch_chunk: Fetcher) -> bool:
        """Start loading chunk ``index`` of ``key`` unless it is cached or already loading.

        Returns whether a load was started. The load runs as its own task (errors are logged
        by the caller's ``fetch_chunk`` or surface on the next :meth:`get_chunk`).
        """
        cid = (key, index)
        if self._has(cid) or cid in self._inflight:
            return False
        self._start(cid, fetch_chunk, ahead=True).add_done_callback(self._prefetch_done(cid))
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

    def _prefetch_done(self, cid: ChunkId) -> Callable[[asyncio.Task[Chunk]], None]:
        def done(task: asyncio.Task[Chunk]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.debug("prefetch of chunk %d of %r failed: %s", cid[1], cid[0], task.exception())

        return done

    async def get_chunk(self, key: str, index: int, fetch_chunk: Fetcher) -> Chunk:
        cid = (key, index)
        with self._lock:
            size = self._index.get(cid)
            if size is not None:
                self._index.move_to_end(cid)
            hot = self._hot.get(cid)
            if hot is not None:
                self._hot.move_to_end(cid)
            else:
                hot = self._writing.get(cid)
            if hot is not None:
                self._hits += 1
        if hot is not None:
            self._read_now(cid)
            return hot
        if size is not None:
            data = await self.run(self._read, cid)
            if data is not None:
                with self._lock:
                    self._hits += 1
                self._remember(cid, data)
                return data
            self._drop(cid)
        return await asyncio.shield(self._start(cid, fetch_chunk))

    def _remember(self, cid: ChunkId, data: Chunk, *, ahead: bool = False) -> None:
        if len(data) > self._hot_max:
            return
        with self._lock:
            old = self._hot.pop(cid, None)
            if old is not None:
                self._hot_bytes -= len(old)
                self._forget_unread(cid)
            self._hot[cid] = data
            self._hot_bytes += len(data)
            if ahead:
                self._unread[cid] = len(data)
                self._unread_bytes += len(data)
            while self._hot_bytes > self._hot_max:
                # Chunks nobody has read yet go last: evicting one wastes its GET.
                victim = next((c for c in self._hot if c not in self._unread), None)
                if victim is None:
                    victim = next(iter(self._hot))
                evicted = self._hot.pop(victim)
                self._hot_bytes -= len(evicted)
                self._forget_unread(victim)
                self._let_go(evicted)

    def invalidate(self, key: str) -> None:
        """Forget every chunk of ``key`` (e.g. after its object was deleted)."""
        with self._lock:
            for cid in [c for c in self._hot if c[0] == key]:
                self._hot_bytes -= len(self._hot.pop(cid))
                self._forget_unread(cid)
            for cid in [c for c in self._writing if c[0] == key]:
                del self._writing[cid]
            victims = [cid for cid in self._index if cid[0] == key]
        for cid in victims:
            self._drop(cid)

    async def _load(
        self,
        cid: ChunkId,
        fetch_chunk: Fetcher,
        sink: ChunkSink | None,
        *,
        ahead: bool = False,
    ) -> Chunk:
        self._fetching += 1
        try:
            if isinstance(fetch_chunk, StreamingFetch):
                assert sink is not None
                data = await fetch_chunk.fetch(cid[1], sink)
            else:
                data = await fetch_chunk(cid[1])
        finally:
            self._fetching -= 1
        self._check_size(cid, data)
        self._remember(cid, data, ahead=ahead and not (sink is not None and sink.read))
        if sink is None:
            await self._store(cid, data)
            return data
        # Readers take the chunk from the sink from now on; the file is written behind them.
        sink.finish(data)
        sink.close()
        await self._store(cid, data, behind=True)
        return data

    def _check_size(self, cid: ChunkId, data: Chunk) -> None:
        if len(data) > self.chunk_size:
            raise RemoteStorageError(
                f"chunk {cid[1]} of {cid[0]!r} has {len(data)} bytes, more than {self.chunk_size}"
            )

    async def _store(self, cid: ChunkId, data: Chunk, *, behind: bool = False) -> None:
        """Write ``cid``'s file, within the disk bound. ``behind``: readers are not waiting
        (a streaming load); the write is skipped when the writer is too far behind."""
        size = len(data) + _CRC.size
        if size > self.max_bytes:
            return
        if behind and self._write_backlog + size > max(self._write_backlog_max, size):
            return
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
        loop = asyncio.get_running_loop()
        if not fits:
            if victims:
                await loop.run_in_executor(self._writer, self._unlink, victims)
            return
        self._write_backlog += size
        with self._lock:
            self._writing[cid] = data
        try:
            await loop.run_in_executor(self._writer, self._write, cid, data, victims)
        except OSError as exc:
            with self._lock:
                self._bytes -= size
            log.warning("could not cache chunk %d of %r: %s", cid[1], cid[0], exc)
            return
        finally:
            self._write_backlog -= size
            with self._lock:
                if self._writing.get(cid) is data:
                    del self._writing[cid]
                    self._let_go(data)
        with self._lock:
            self._index[cid] = size

    def _new_buffer(self, size: int) -> bytearray:
        """A buffer for a chunk of ``size`` bytes: a spare one nothing refers to any more, if
        any (fresh memory costs page faults: about 1.7 s of CPU per GB on a VM, more than the
        rest of a replay), else a new one. Contents are stale: the loader overwrites them
        before anything is published.

        Reuse is safe because it is decided by reference count: a buffer is handed out only
        when the spare list's is its one reference (``getrefcount`` counts its own argument
        too). Any view (a response being sent, a checksum running in a thread) holds a
        reference through its memoryview; a sink or a cache entry holds one too; and nothing
        can take a new reference to a spare buffer but this method, under the lock."""
        if size == self.chunk_size:
            with self._lock:
                spare = self._spare
                for i in range(len(spare)):
                    if sys.getrefcount(spare[i]) == 2:
                        self.reused_buffers += 1
                        return spare.pop(i)
        return bytearray(size)

    def _let_go(self, data: Chunk) -> None:
        """(under the lock) The cache no longer holds ``data``: a buffer to reuse once nobody
        else does (it may still be served, written or checked: see :meth:`_new_buffer`)."""
        if (
            isinstance(data, bytearray)
            and len(data) == self.chunk_size
            and all(data is not held for held in self._hot.values())
            and all(data is not held for held in self._writing.values())
            and all(data is not spare for spare in self._spare)
        ):
            self._spare.append(data)
            if len(self._spare) > SPARE_BUFFERS:
                del self._spare[0]

    def _forget_unread(self, cid: ChunkId) -> None:
        """(under the lock) ``cid`` was read or left memory: no longer read-ahead."""
        size = self._unread.pop(cid, None)
        if size is not None:
            self._unread_bytes -= size

    def _drop(self, cid: ChunkId) -> None:
        with self._lock:
            hot = self._hot.pop(cid, None)
            if hot is not None:
                self._hot_bytes -= len(hot)
                self._forget_unread(cid)
            size = self._index.pop(cid, None)
            if size is not None:
                self._bytes -= size
        if size is not None:
            self._path(cid).unlink(missing_ok=True)

    def _path(self, cid: ChunkId) -> Path:
        digest = hashlib.sha256(cid[0].encode()).hexdigest()[:32]
        return self._dir / f"{digest}-{cid[1]:010d}{_SUFFIX}"

    def _read(self, cid: ChunkId) -> Chunk | None:
        """The chunk's bytes from its file, read straight into their buffer (no copy holding
        the GIL), or None when the file is gone or fails its checksum."""
        try:
            with open(self._path(cid), "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size - _CRC.size
                if size < 0:
                    data: Chunk | None = None
                elif size == self.chunk_size:
                    data = self._new_buffer(size)
                    if f.readinto(data) != size:
                        data = None
                else:
                    data = f.read(size)
                trailer = f.read(_CRC.size)
        except FileNotFoundError:
            return None
        if (
            data is None
            or len(data) != size
            or len(trailer) != _CRC.size
            or _CRC.unpack(trailer)[0] != crc32c(data)
        ):
            log.warning("cached chunk %d of %r is corrupt; fetching it again", cid[1], cid[0])
            return None
        return data

    def _unlink(self, victims: list[ChunkId]) -> None:
        for victim in victims:
            self._path(victim).unlink(missing_ok=True)

    def _write(self, cid: ChunkId, data: Chunk, victims: list[ChunkId]) -> None:
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
