"""Reads archived offsets back: manifest -> index object -> ranged GETs through the chunk cache.

A read for offset ``o`` finds the segment holding ``o`` in the manifest, the index entry whose
byte range holds it, and pulls bytes from there through :class:`streamd.tiering.cache.ChunkCache`
(chunks in memory and on local disk, LRU, bounded). It then answers whole batches from the one
holding ``o`` (in a compacted topic, the first one after it if ``o`` was cleaned away), at most
``max_bytes`` of them unless the first alone is larger (KIP-74 ``min_one``): the same bytes, batch
for batch, that the local log served before the segment left the disk (invariant 7).

Integrity (invariants 6 and 10): index objects are read whole and checked against the store's
CRC32C stamp and the manifest's ``index_checksum``. Every chunk is checked when it is loaded,
before the cache keeps it: its GET is widened to whole checksum blocks and each block is checked
against the index object's block checksums (a batch's own CRC32C does not cover its base offset
or length). Objects whose index has no block checksums (version 1) are read whole and checked
against the manifest's ``checksum`` instead. What is served is checked again against the
offsets the manifest and the index promise: the batch at an index entry's position has that
entry's base offset, offsets increase inside the object's range (densely but for compaction
gaps, which the block checksums make safe to accept), and a read that reaches the
object's end ends at its last offset; plus framing and each batch's CRC32C. Any failure raises
:class:`RemoteStorageError` (KAFKA_STORAGE_ERROR for that partition), drops the cached chunks of
the object and logs; wrong bytes are never returned.

Latency: every round trip of a read overlaps with the others. A cold read starts the index GET
and the GET of the chunk its offset most likely lies in (estimated from the offsets and size in
the manifest) at once; a chunk's checksum check waits for the index, not its GET. After each
read the next ``read_ahead`` chunks are fetched in background tasks, continuing into the next
objects (their index objects too), so a consumer replaying history mostly hits the cache, and
:meth:`RemoteReader.prefetch` lets a Fetch start every partition's loads before it reads the
first one.

Streaming: a chunk is one GET whose bytes are checked block by block as they arrive (each 64 KiB
checksum block is published to the cache only once it matches the index) when the store can
stream (``read_range``; the S3 store can, the local-directory store reads whole ranges). A read
then waits only for the bytes it must answer with: its first ``READY_MIN_BYTES`` or what the
Fetch still needs for ``min_bytes`` (whole batches; at least the one holding the offset), and
answers with whatever else of its range has arrived by then, never more than ``max_bytes`` and
never past the chunk it starts in unless it must: the next fetch follows the download instead
of waiting for a 16 MiB chunk to be complete, and an answer inside one chunk is a view of it,
not a copy. An answer that ends with its object short of what the Fetch still needs for
``min_bytes`` continues into the next object; one that already satisfies the Fetch does not (a
``min_bytes=1`` Fetch is answered from one object, as Kafka answers from one segment: a client
that commits between Fetch responses, like a transform worker, gets them at the object pace).
All I/O is asynchronous or on the cache's worker threads (cache files, CRC checks of
large reads, record decoding for timestamp lookups), which run at a lower CPU priority than the
event loop; the event loop copies arriving pieces and checks their blocks, and slices bytes.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from streamd.errors import OffsetOutOfRange, RemoteStorageError, StreamdError
from streamd.log.batch import HEADER_SIZE, LOG_OVERHEAD, PREFIX, check_batch, iter_record_timestamps
from streamd.log.txn_index import AbortedTxn, collect, decode_entries
from streamd.tiering.cache import Chunk, ChunkCache, ChunkSink, StreamingFetch
from streamd.tiering.checksum import verify
from streamd.tiering.manifest import PartitionManifest, SegmentMeta, segment_for_offset
from streamd.tiering.segment_index import BLOCK_SIZE, RemoteIndex, decode_index
from streamd.tiering.stats import TieringStats
from streamd.tiering.store import ObjectStore, StoreError

log = logging.getLogger("streamd.tiering")

INDEX_CACHE_ENTRIES = 256
VERIFY_IN_THREAD_BYTES = 256 * 1024
READY_MIN_BYTES = 1 << 20
MAX_READ_AHEAD_TASKS = 32


class RemoteReader:
    def __init__(
        self,
        store: ObjectStore,
        cache: ChunkCache,
        stats: TieringStats,
        *,
        read_ahead_chunks: int = 2,
    ) -> None:
        self._store = store
        self._cache = cache
        self._stats = stats
        self._read_ahead = max(0, read_ahead_chunks)
        self._indexes: OrderedDict[str, RemoteIndex] = OrderedDict()
        self._txn_indexes: OrderedDict[str, list[AbortedTxn]] = OrderedDict()
        self._index_loads: dict[str, asyncio.Task[RemoteIndex]] = {}
        self._background: set[asyncio.Task[object]] = set()
        self._legacy_warned: set[str] = set()

    # ---- fetch ---------------------------------------------------------------------------------

    async def read(
        self,
        manifest: PartitionManifest,
        offset: int,
        max_bytes: int,
        min_one: bool,
        *,
        below: int | None = None,
        ready_bytes: int = 0,
    ) -> bytes | memoryview:
        """Whole batches from the one holding ``offset``. Read-ahead stops before ``below``
        (the local log start: what lies above is read from local disk, never fetched).

        The answer may hold less than ``max_bytes`` while the object is still arriving from
        the bucket: it is given as soon as at least ``max(ready_bytes, READY_MIN_BYTES)`` of
        it (capped by ``max_bytes``) are here and checked (``ready_bytes``: what the Fetch
        still needs for its ``min_bytes``). An answer that ends with its object short of
        ``ready_bytes`` continues into the next archived object (else the Fetch would wait out
        its max_wait for a few bytes); one that is not short of it ends with its object."""
        segment = segment_for_offset(manifest, offset)
        if segment is None:
            raise OffsetOutOfRange(
                f"offset {offset} is not archived for {manifest.topic}-{manifest.partition} "
                f"(remote [{manifest.remote_start_offset}, {manifest.last_uploaded_offset}])"
            )
        self._stats.remote_reads += 1
        max_bytes = max(0, max_bytes)
        try:
            data = await self._read_batches(
                manifest, segment, offset, max_bytes, min_one, below, ready_bytes
            )
        except StreamdError as exc:
            raise self._failed(segment, exc) from exc
        enough = min(max_bytes, ready_bytes)
        if not 0 < len(data) < enough or _next_offset(data) != segment.last_offset + 1:
            return data
        following = segment.last_offset + 1
        if below is not None and following >= below:
            return data
        try:
            more = await self.read(
                manifest,
                following,
                max_bytes - len(data),
                False,
                below=below,
                ready_bytes=enough - len(data),
            )
        except StreamdError:
            return data  # what was read stands; the next fetch meets the error
        return b"".join((data, more)) if more else data

    def prefetch(self, manifest: PartitionManifest, offset: int) -> None:
        """Start loading what a read of ``offset`` will need (index object and the chunk the
        offset most likely lies in), without waiting: a Fetch calls this for every remote
        partition first, so their round trips overlap instead of adding up."""
        seg = segment_for_offset(manifest, offset)
        if seg is None:
            return
        index = self._indexes.get(seg.index_key)
        if index is None:
            self._spawn(self._index(seg))
            position = _estimate_position(seg, offset)
        else:
            position = index.lookup(offset)[0]
        self._prefetch(seg, position // self._cache.chunk_size)

    async def _read_batches(
        self,
        manifest: PartitionManifest,
        seg: SegmentMeta,
        offset: int,
        max_bytes: int,
        min_one: bool,
        below: int | None = None,
        ready_bytes: int = 0,
    ) -> bytes | memoryview:
        if seg.index_key not in self._indexes:
            # Cold: the chunk GET runs alongside the index GET instead of after it.
            self._prefetch(seg, _estimate_position(seg, offset) // self._cache.chunk_size)
        index = await self._index(seg)
        start, entry_end, entry_base = index.lookup(offset)
        # The batch holding ``offset`` starts inside its index entry, so whatever fits in
        # ``max_bytes`` from it lies below ``entry_end + max_bytes``; only a first batch larger
        # than that (KIP-74 min_one) needs a second round trip.
        want = min(seg.size_bytes, entry_end + max_bytes)
        # Chunks for this read and the read-ahead after it (into the next segments) all start
        # loading now, concurrently; the read below then waits only for its own, and only for
        # its first ``at_least`` bytes (READY_MIN_BYTES, or the Fetch's min_bytes still
        # missing, and the entry holding ``offset``): what else has arrived by then is
        # answered too, the rest is the next fetch's.
        self._read_ahead_from(manifest, seg, start, want - start, below)
        at_least = min(max_bytes, max(ready_bytes, READY_MIN_BYTES))
        need = min(want, max(entry_end, start + at_least))
        # An answer stays inside the chunk it starts in (unless its first batch crosses into
        # the next): it is then a view of the cached chunk, not a copy of two joined, and the
        # next fetch starts in the next chunk.
        chunk_end = (start // self._cache.chunk_size + 1) * self._cache.chunk_size
        reach = min(want, max(chunk_end, need))
        data = await self._ready(seg, start, reach, need)
        partial = start + len(data) < want
        if len(data) >= HEADER_SIZE and PREFIX.unpack_from(data, 0)[0] != entry_base:
            raise RemoteStorageError(
                f"the batch at byte {start} of {seg.key} has base offset "
                f"{PREFIX.unpack_from(data, 0)[0]}, its index object says {entry_base}"
            )
        while True:
            found = _locate(
                data, start, seg, offset, max_bytes, min_one, partial=partial, at_least=at_least
            )
            if isinstance(found, tuple):
                break
            data = bytes(data) + await self._range(seg, start + len(data), found)
        first, end = found
        if end == first:
            return b""
        if (first, end) != (start, start + len(data)):
            data = memoryview(data)[first - start : end - start]  # a view: no copy
        if len(data) >= VERIFY_IN_THREAD_BYTES:
            await self._cache.run(_verify_batches, data, seg, first)
        else:
            _verify_batches(data, seg, first)
        return data

    # ---- timestamps ----------------------------------------------------------------------------

    async def offset_for_timestamp(
        self, manifest: PartitionManifest, timestamp: int, below: int
    ) -> tuple[int, int] | None:
        """First archived (offset, timestamp) with timestamp >= ``timestamp``, offset < ``below``
        and offset >= the remote start; None if the archive below ``below`` has none."""
        for seg in manifest.segments:
            if seg.base_offset >= below:
                break
            if seg.max_timestamp < timestamp:
                continue
            try:
                index = await self._index(seg)
                for start, end in index.ranges_from_timestamp(timestamp):
                    data = await self._range(seg, start, end)
                    found = await self._cache.run(
                        _find_timestamp,
                        data,
                        seg,
                        start,
                        timestamp,
                        manifest.remote_start_offset,
                        below,
                    )
                    if found is not None:
                        return found
            except StreamdError as exc:
                raise self._failed(seg, exc) from exc
        return None

    # ---- transactions --------------------------------------------------------------------------

    async def aborted_transactions(
        self, manifest: PartitionManifest, fetch_offset: int, upper: int
    ) -> tuple[list[AbortedTxn], bool]:
        """Aborted transactions with data in ``[fetch_offset, upper)``, from the index objects
        of the archived segments from the one holding ``fetch_offset`` on (see
        :mod:`streamd.log.txn_index`), and whether they settle it."""
        segs = manifest.segments
        i = bisect.bisect_right(segs, fetch_offset, key=lambda s: s.base_offset) - 1
        found: list[AbortedTxn] = []
        for seg in segs[max(i, 0) :]:
            if not seg.txn_index_key:
                continue
            try:
                entries = await self._txn_index(seg)
            except StreamdError as exc:
                raise self._failed(seg, exc) from exc
            more, complete = collect([entries], fetch_offset, upper)
            found += more
            if complete:
                return found, True
        return found, False

    async def _txn_index(self, seg: SegmentMeta) -> list[AbortedTxn]:
        cached = self._txn_indexes.get(seg.txn_index_key)
        if cached is not None:
            self._txn_indexes.move_to_end(seg.txn_index_key)
            return cached
        data = await self._store.get(seg.txn_index_key)
        self._stats.downloaded_bytes += len(data)
        verify(data, seg.txn_index_checksum, what=f"transaction index {seg.txn_index_key}")
        try:
            entries = decode_entries(data)
        except ValueError as exc:
            raise RemoteStorageError(f"{seg.txn_index_key} does not parse: {exc}") from exc
        self._txn_indexes[seg.txn_index_key] = entries
        while len(self._txn_indexes) > INDEX_CACHE_ENTRIES:
            self._txn_indexes.popitem(last=False)
        return entries

    # ---- objects -------------------------------------------------------------------------------

    async def _index(self, seg: SegmentMeta) -> RemoteIndex:
        cached = self._indexes.get(seg.index_key)
        if cached is not None:
            self._indexes.move_to_end(seg.index_key)
            return cached
        task = self._index_loads.get(seg.index_key)
        if task is None:
            task = asyncio.ensure_future(self._load_index(seg))
            self._index_loads[seg.index_key] = task
            task.add_done_callback(lambda _t: self._index_loads.pop(seg.index_key, None))
        return await asyncio.shield(task)

    async def _load_index(self, seg: SegmentMeta) -> RemoteIndex:
        data = await self._store.get(seg.index_key)
        self._stats.downloaded_bytes += len(data)
        verify(data, seg.index_checksum, what=f"index object {seg.index_key}")
        index = decode_index(data, seg.size_bytes)
        self._indexes[seg.index_key] = index
        while len(self._indexes) > INDEX_CACHE_ENTRIES:
            self._indexes.popitem(last=False)
        return index

    async def _ready(
        self, seg: SegmentMeta, start: int, end: int, need: int
    ) -> bytes | memoryview:
        """``[start, x)`` of ``seg`` for the largest ``x <= end`` that is here now, at least
        ``need`` (see :meth:`ChunkCache.get_ready`)."""
        end = min(end, seg.size_bytes)
        need = min(need, end)
        if start >= end:
            return b""
        data = await self._cache.get_ready(seg.key, start, end, need, self._chunk_fetcher(seg))
        if len(data) < need - start:
            raise RemoteStorageError(f"short read of {seg.key} [{start}, {need})")
        return data

    async def _range(self, seg: SegmentMeta, start: int, end: int) -> bytes | memoryview:
        end = min(end, seg.size_bytes)
        if start >= end:
            return b""
        data = await self._cache.get_range(seg.key, start, end, self._chunk_fetcher(seg))
        if len(data) != end - start:
            raise RemoteStorageError(f"short read of {seg.key} [{start}, {end})")
        return data

    def _chunk_fetcher(self, seg: SegmentMeta) -> StreamingFetch:
        chunk_size = self._cache.chunk_size

        async def fetch_chunk(i: int, sink: ChunkSink) -> Chunk:
            lo = i * chunk_size
            hi = min(lo + chunk_size, seg.size_bytes)
            if lo >= hi:
                return b""
            stream = getattr(self._store, "read_range", None)
            index = self._indexes.get(seg.index_key)
            if stream is None or not _streamable(index, lo, hi, seg.size_bytes):
                return await self._fetch_verified(seg, lo, hi)
            return await self._stream_verified(seg, lo, hi, sink, stream)

        return StreamingFetch(fetch_chunk)

    async def _stream_verified(
        self,
        seg: SegmentMeta,
        lo: int,
        hi: int,
        sink: ChunkSink,
        stream: Callable[[str, tuple[int, int], Callable[[bytes], None]], Awaitable[int]],
    ) -> Chunk:
        """Bytes ``[lo, hi)`` of ``seg`` in one streamed GET, published to ``sink`` block by
        block as each checksum block arrives and matches the index (a reader waiting for the
        start of the chunk is served before its end arrives; no byte is published unchecked).
        ``lo`` is block-aligned and ``hi`` too unless it is the end of the object. When the
        index arrives after the first bytes, what has arrived is checked then, not when the next
        piece comes (a stalled transfer must not hold back bytes that are here)."""
        index = self._indexes.get(seg.index_key)
        index_load = None if index is not None else asyncio.ensure_future(self._index(seg))
        buf = sink.allocate(hi - lo)
        view = memoryview(buf)
        size = len(buf)
        received = verified = 0
        failure: StreamdError | None = None
        what = f"object {seg.key}"

        def check() -> None:
            nonlocal verified
            assert index is not None
            bs = index.block_size
            upto = received if received == size else received // bs * bs
            if upto > verified:
                index.verify(view[verified:upto], lo + verified, what=what)
                verified = upto
                sink.publish(verified)

        def index_arrived(task: asyncio.Future[RemoteIndex]) -> None:
            nonlocal index, failure
            if index is None and failure is None and _loaded(task):
                loaded = task.result()
                if _streamable(loaded, lo, hi, seg.size_bytes):
                    index = loaded
                    try:
                        check()
                    except StreamdError as exc:
                        failure = exc  # raised by the transfer's next step

        def consume(piece: bytes) -> None:
            nonlocal received
            if failure is not None:
                raise failure
            n = len(piece)
            if received + n > size:
                raise RemoteStorageError(f"{what} sent more than the {size} bytes asked for")
            view[received : received + n] = piece
            received += n
            if index is not None:
                check()

        if index_load is not None:
            index_load.add_done_callback(index_arrived)
        try:
            received_total = await stream(seg.key, (lo, hi), consume)
            if index_load is not None:
                loaded = await index_load
                index_load = None
                if failure is not None:
                    raise failure
                if index is None:
                    if not _streamable(loaded, lo, hi, seg.size_bytes):
                        # Checksums of another shape (a version 1 index): nothing was published.
                        return await self._fetch_verified(seg, lo, hi)
                    index = loaded
        finally:
            if index_load is not None:
                index_load.cancel()
            self._stats.downloaded_bytes += received
        if received_total != size or received != size:
            raise RemoteStorageError(
                f"object {seg.key} is shorter than the {seg.size_bytes} bytes in its manifest"
            )
        assert index is not None
        if size - verified >= VERIFY_IN_THREAD_BYTES:
            await self._cache.run(index.verify, view[verified:], lo + verified, what=what)
            verified = size
            sink.publish(size)
        check()
        return buf

    async def _fetch_verified(self, seg: SegmentMeta, lo: int, hi: int) -> bytes:
        """Bytes ``[lo, hi)`` of ``seg``, checked against the index's block checksums (the
        GET widened to whole blocks) before anyone sees them."""
        index = self._indexes.get(seg.index_key)
        index_load = None if index is not None else asyncio.ensure_future(self._index(seg))
        try:
            bs = index.block_size if index is not None else BLOCK_SIZE
            glo, ghi = lo // bs * bs, min(seg.size_bytes, -(-hi // bs) * bs)
            data = await self._get_range(seg, glo, ghi)
            if index_load is not None:
                index = await index_load
                index_load = None
        finally:
            if index_load is not None:
                index_load.cancel()
        assert index is not None
        if index.block_crcs is None:
            return await self._fetch_legacy(seg, lo, hi)
        if (glo, ghi) != index.covering_blocks(lo, hi):
            glo, ghi = index.covering_blocks(lo, hi)
            data = await self._get_range(seg, glo, ghi)
        what = f"object {seg.key}"
        if len(data) >= VERIFY_IN_THREAD_BYTES:
            await self._cache.run(index.verify, data, glo, what=what)
        else:
            index.verify(data, glo, what=what)
        if (glo, ghi) == (lo, hi):
            return data
        return data[lo - glo : hi - glo]

    async def _get_range(self, seg: SegmentMeta, lo: int, hi: int) -> bytes:
        data = await self._store.get(seg.key, byte_range=(lo, hi))
        self._stats.downloaded_bytes += len(data)
        if len(data) != hi - lo:
            raise RemoteStorageError(
                f"object {seg.key} is shorter than the {seg.size_bytes} bytes in its manifest"
            )
        return data

    async def _fetch_legacy(self, seg: SegmentMeta, lo: int, hi: int) -> bytes:
        """An object whose index predates block checksums: read whole, checked against the
        manifest's checksum (slow, but never unverified bytes)."""
        if seg.key not in self._legacy_warned:
            self._legacy_warned.add(seg.key)
            log.warning(
                "%s has a version 1 index (no block checksums): each chunk load reads the "
                "whole object to verify it", seg.key,
            )
        data = await self._store.get(seg.key)
        self._stats.downloaded_bytes += len(data)
        if len(data) >= VERIFY_IN_THREAD_BYTES:
            await self._cache.run(verify, data, seg.checksum, what=f"object {seg.key}")
        else:
            verify(data, seg.checksum, what=f"object {seg.key}")
        if len(data) != seg.size_bytes:
            raise RemoteStorageError(
                f"object {seg.key} has {len(data)} bytes, its manifest says {seg.size_bytes}"
            )
        return data[lo:hi]

    def _failed(self, seg: SegmentMeta, exc: StreamdError) -> StreamdError:
        if isinstance(exc, OffsetOutOfRange):
            return exc
        self._stats.download_errors += 1
        self._cache.invalidate(seg.key)
        self._indexes.pop(seg.index_key, None)
        log.error("remote read of %s failed: %s", seg.key, exc)
        if isinstance(exc, RemoteStorageError):
            return exc
        return RemoteStorageError(f"archived segment {seg.key} is unreadable: {exc}")

    # ---- read-ahead ----------------------------------------------------------------------------

    def _read_ahead_from(
        self,
        manifest: PartitionManifest,
        seg: SegmentMeta | None,
        pos: int,
        needed: int,
        below: int | None = None,
    ) -> None:
        """Start loading the chunks of ``[pos, pos + needed)`` of ``seg`` and of the
        ``read_ahead`` chunks that follow it, continuing into the next archived segments, but
        not into offsets at or above ``below`` (they are read locally)."""
        cs = self._cache.chunk_size
        budget = needed + self._read_ahead * cs
        while seg is not None and budget > 0:
            last = min(seg.size_bytes, pos + budget)
            if below is not None and seg.last_offset >= below and pos > 0:
                index = self._indexes.get(seg.index_key)
                if index is not None:  # no chunk past the entry holding below - 1
                    last = min(last, index.lookup(max(seg.base_offset, below - 1))[1])
            if last <= pos:
                return
            for chunk in range(pos // cs, (last - 1) // cs + 1):
                if self._cache.loading >= MAX_READ_AHEAD_TASKS:
                    return
                self._prefetch(seg, chunk)
            budget -= seg.size_bytes - pos
            if budget <= 0:
                return
            seg = segment_for_offset(manifest, seg.last_offset + 1)
            pos = 0
            if seg is not None and below is not None and seg.base_offset >= below:
                return
            if seg is not None and seg.index_key not in self._indexes:
                self._spawn(self._index(seg))

    def _prefetch(self, seg: SegmentMeta, chunk: int) -> None:
        if self._cache.prefetch(seg.key, chunk, self._chunk_fetcher(seg)):
            self._stats.read_ahead_chunks += 1

    def _spawn(self, coro: object) -> None:
        if len(self._background) >= MAX_READ_AHEAD_TASKS:
            coro.close()  # type: ignore[attr-defined]
            return
        task = asyncio.ensure_future(self._quiet(coro))  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _quiet(coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except (StreamdError, StoreError, OSError) as exc:
            log.debug("read-ahead failed: %s", exc)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._cache.cancel_loads()


def _locate(
    data: bytes | memoryview,
    start: int,
    seg: SegmentMeta,
    offset: int,
    max_bytes: int,
    min_one: bool,
    *,
    partial: bool = False,
    at_least: int = 0,
) -> tuple[int, int] | int:
    """Where the answer for ``offset`` lies in ``data`` (bytes ``[start, ...)`` of ``seg``).

    Returns ``(first, end)``: the batch holding ``offset`` and the whole batches after it that
    fit in ``max_bytes`` (the first one regardless when ``min_one``), as segment positions; or,
    when ``data`` ends too early to decide, the segment position it must reach. ``partial``:
    ``data`` is only what has arrived so far (or what lies in one chunk), so the answer may
    stop at the last whole batch in it once it holds ``at_least`` bytes (a shorter one asks
    for the rest of the batch that gets it there).
    """
    limit = start + len(data)
    size = seg.size_bytes
    pos = start
    while True:
        if pos >= size:
            raise RemoteStorageError(f"offset {offset} not found in {seg.key}")
        if pos + HEADER_SIZE > size:
            raise RemoteStorageError(f"truncated batch at byte {pos} of {seg.key}")
        if pos + HEADER_SIZE > limit:
            return pos + HEADER_SIZE
        base, length = _prefix(data, pos - start, pos, size, seg)
        if base >= offset:
            break  # the batch holding ``offset``, or the first after a compaction gap
        if base + int.from_bytes(data[pos - start + 23 : pos - start + 27], "big") >= offset:
            break
        pos += LOG_OVERHEAD + length
    first = end = pos
    while end < size:
        if end + LOG_OVERHEAD > limit:
            if partial and end - first < at_least:
                return end + LOG_OVERHEAD
            break  # ``data`` reaches first + max_bytes (or the end): no batch here can fit
        _, length = _prefix(data, end - start, end, size, seg)
        total = length + LOG_OVERHEAD
        if end - first + total > max_bytes and not (end == first and min_one):
            break
        if end + total > limit:
            if partial and end > first and end - first >= at_least:
                break
            return end + total
        end += total
    return first, end


def _next_offset(data: bytes | memoryview) -> int:
    """The offset after the last of the (checked) batches in ``data``."""
    pos = following = 0
    while pos + HEADER_SIZE <= len(data):
        base, length = PREFIX.unpack_from(data, pos)
        following = base + int.from_bytes(data[pos + 23 : pos + 27], "big") + 1
        pos += LOG_OVERHEAD + length
    return following


def _prefix(
    data: bytes | memoryview, at: int, pos: int, size: int, seg: SegmentMeta
) -> tuple[int, int]:
    base, length = PREFIX.unpack_from(data, at)
    if length <= 0 or pos + LOG_OVERHEAD + length > size:
        raise RemoteStorageError(f"bad batch length {length} at byte {pos} of {seg.key}")
    return int(base), int(length)


def _verify_batches(data: bytes | memoryview, seg: SegmentMeta, position: int) -> None:
    """Every batch well-formed with a matching CRC32C and offsets inside ``seg``, increasing (a
    compacted topic's objects have gaps, and batches holding fewer records than offsets); a
    range that reaches the end of the object ends at the manifest's last offset."""
    pos = 0
    expected: int | None = None
    try:
        while pos < len(data):
            header = check_batch(data, pos, len(data), compacted=True)
            if expected is not None and header.base_offset < expected:
                raise RemoteStorageError(f"offsets go back to {header.base_offset}")
            if header.base_offset < seg.base_offset or header.last_offset > seg.last_offset:
                raise RemoteStorageError(
                    f"batch {header.base_offset}-{header.last_offset} lies outside the segment"
                )
            expected = header.next_offset
            pos += header.size
        if position + pos == seg.size_bytes and expected != seg.last_offset + 1:
            raise RemoteStorageError(
                f"the object ends at offset {expected - 1 if expected else '?'}, its manifest "
                f"says {seg.last_offset}"
            )
    except StreamdError as exc:
        raise RemoteStorageError(
            f"{seg.key} at byte {position + pos} does not verify: {exc}"
        ) from exc


def _loaded(task: asyncio.Future[RemoteIndex] | None) -> bool:
    return (
        task is not None and task.done() and not task.cancelled() and task.exception() is None
    )


def _streamable(index: RemoteIndex | None, lo: int, hi: int, size: int) -> bool:
    """Whether ``[lo, hi)`` can be checked block by block as it streams in: whole blocks of
    the index (``BLOCK_SIZE`` while the index is not known yet) from ``lo`` to ``hi`` or to the
    object's end."""
    if index is not None and index.block_crcs is None:
        return False
    bs = BLOCK_SIZE if index is None else index.block_size
    return lo % bs == 0 and (hi % bs == 0 or hi == size)


def _estimate_position(seg: SegmentMeta, offset: int) -> int:
    """Where ``offset`` probably lies in ``seg``, assuming evenly sized records."""
    span = seg.last_offset - seg.base_offset + 1
    return min(seg.size_bytes - 1, seg.size_bytes * (offset - seg.base_offset) // span)


def _find_timestamp(
    data: bytes | memoryview, seg: SegmentMeta, position: int, timestamp: int, low: int, below: int
) -> tuple[int, int] | None:
    _verify_batches(data, seg, position)
    pos = 0
    while pos < len(data):
        header = check_batch(data, pos, len(data))
        if header.max_timestamp >= timestamp and header.last_offset >= low:
            for offset, ts in iter_record_timestamps(data[pos : pos + header.size]):
                if ts >= timestamp and low <= offset < below:
                    return offset, ts
        pos += header.size
    return None
