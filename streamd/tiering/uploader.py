"""The upload pipeline: find candidates -> upload segment -> upload index -> admit into manifest.

One :meth:`Uploader.sync_partition` call moves one partition forward as far as it can:

1. roll the active segment if it has been open for ``segment.ms`` (idle or not), so that a quiet
   partition's tail gets archived too;
2. select candidates (:mod:`streamd.tiering.candidates`): sealed, durable, not yet archived;
3. for each, in offset order: read and validate the segment off the event loop, PUT the segment
   object, then its index object (:mod:`streamd.tiering.segment_index`); both keys are
   deterministic, so a retry after a crash or an error overwrites the same objects;
4. admit the uploaded segments into the manifest and PUT it. Only now does the partition's
   ``manifest`` (what local retention and remote reads trust) change (invariant 3).

Stages return :class:`UploadResult` values instead of raising across task boundaries: ``OK``,
``RETRY`` (the store failed; try again next tick) or ``FAILED`` (local data or the manifest is
not fit to archive; reported, also retried next tick in case the cause was transient). Segment
uploads run under a semaphore of ``tiering.upload_concurrency`` shared by all partitions, so
archiving never floods the store or starves produce/fetch. A partition is synced by one task at
a time (its state lock).

``fail_after_segment_upload`` is a test hook (``tiering.debug.fail_after_segment_upload``): the
process exits right after the first segment object is stored, before its index and manifest,
to simulate a crash in the middle of the pipeline.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from streamd.errors import StreamdError
from streamd.log.partition import PartitionLog
from streamd.log.segment import Segment
from streamd.tiering import keys
from streamd.tiering.candidates import select_candidates
from streamd.tiering.checksum import crc32c_hex
from streamd.tiering.manifest import (
    ManifestConflict,
    PartitionManifest,
    SegmentMeta,
    add_segment,
    dump_partition_manifest,
)
from streamd.tiering.partition_state import PartitionState
from streamd.tiering.segment_index import scan_segment_file
from streamd.tiering.stats import TieringStats
from streamd.tiering.store import ObjectStore, StoreError

log = logging.getLogger("streamd.tiering")

MANIFEST_EVERY = 16
"""Store the manifest at least every this many admitted segments within one sync."""


class Outcome(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class UploadResult:
    outcome: Outcome
    meta: SegmentMeta | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SyncResult:
    outcome: Outcome
    uploaded: int = 0
    error: str | None = None


def now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


class Uploader:
    def __init__(
        self,
        store: ObjectStore,
        stats: TieringStats,
        *,
        concurrency: int,
        on_manifest_stored: Callable[[PartitionManifest], Awaitable[None]],
        fail_after_segment_upload: bool = False,
    ) -> None:
        self._store = store
        self._stats = stats
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self._on_manifest_stored = on_manifest_stored
        self._crash_hook = fail_after_segment_upload

    async def sync_partition(self, state: PartitionState, plog: PartitionLog) -> SyncResult:
        async with state.lock:
            return await self._sync(state, plog)

    async def _sync(self, state: PartitionState, plog: PartitionLog) -> SyncResult:
        if not state.loaded:
            return SyncResult(Outcome.RETRY, error="manifest not loaded from the bucket yet")
        plog.roll_if_due(now_ms())
        selection = select_candidates(list(plog.segments), state.manifest, plog.high_watermark)
        state.blocked = selection.blocked
        state.pending_uploads = len(selection.candidates)
        manifest = state.manifest
        uploaded = 0
        admitted = 0
        failure: SyncResult | None = None
        for segment in selection.candidates:
            result = await self.upload_segment(state, segment)
            if result.outcome is not Outcome.OK or result.meta is None:
                failure = SyncResult(result.outcome, uploaded, result.error)
                break
            try:
                manifest = add_segment(manifest, result.meta)
            except ManifestConflict as exc:
                failure = SyncResult(Outcome.FAILED, uploaded, str(exc))
                break
            admitted += 1
            if admitted >= MANIFEST_EVERY:
                stored = await self.store_manifest(state, manifest)
                if stored.outcome is not Outcome.OK:
                    return SyncResult(stored.outcome, uploaded, stored.error)
                uploaded += admitted
                admitted = 0
        if admitted:
            stored = await self.store_manifest(state, manifest)
            if stored.outcome is not Outcome.OK:
                return SyncResult(stored.outcome, uploaded, stored.error)
            uploaded += admitted
        state.pending_uploads = max(0, state.pending_uploads - uploaded)
        if failure is not None:
            return SyncResult(failure.outcome, uploaded, failure.error)
        if selection.blocked:
            return SyncResult(Outcome.FAILED, uploaded, selection.blocked)
        return SyncResult(Outcome.OK, uploaded)

    async def upload_segment(self, state: PartitionState, segment: Segment) -> UploadResult:
        """Stages 2 and 3: segment object, then index object. Nothing in the manifest yet."""
        where = (
            f"segment {segment.base_offset}-{segment.last_offset} "
            f"of {state.topic}-{state.partition}"
        )
        async with self._sem:
            try:
                # A private descriptor: the segment may be closed (topic deleted) meanwhile.
                fd = segment.file.dup()
            except (OSError, StreamdError) as exc:
                self._stats.upload_errors += 1
                return UploadResult(Outcome.FAILED, error=f"cannot archive {where}: {exc}")
            try:
                return await self._upload(state, segment, fd, where)
            finally:
                os.close(fd)

    async def _upload(
        self, state: PartitionState, segment: Segment, fd: int, where: str
    ) -> UploadResult:
        size = segment.size
        try:
            scan, checksum = await asyncio.to_thread(
                scan_segment_file, fd, size, segment.base_offset
            )
        except (StreamdError, OSError) as exc:
            self._stats.upload_errors += 1
            return UploadResult(Outcome.FAILED, error=f"cannot archive {where}: {exc}")
        if scan.last_offset != segment.last_offset:
            self._stats.upload_errors += 1
            return UploadResult(
                Outcome.FAILED,
                error=f"{where} holds offsets up to {scan.last_offset}, expected "
                f"{segment.last_offset}",
            )
        seg_key = keys.segment_key(
            state.topic, state.topic_id, state.partition, segment.base_offset, scan.last_offset
        )
        index_key = keys.segment_index_key(
            state.topic, state.topic_id, state.partition, segment.base_offset, scan.last_offset
        )
        try:
            # Streamed from the file in parts: memory stays bounded by one part.
            await self._store.put_file(seg_key, fd, size, checksum=checksum)
            segment.file.drop_behind(0, size)
            self._stats.uploaded_bytes += size
            if self._crash_hook:
                log.error("tiering.debug.fail_after_segment_upload: exiting after %s", seg_key)
                os._exit(75)
            await self._store.put(index_key, scan.index)
            self._stats.uploaded_bytes += len(scan.index)
        except StoreError as exc:
            self._stats.upload_errors += 1
            outcome = Outcome.RETRY if exc.retriable else Outcome.FAILED
            return UploadResult(outcome, error=f"upload of {where} failed: {exc}")
        self._stats.uploaded_segments += 1
        meta = SegmentMeta(
            base_offset=segment.base_offset,
            last_offset=scan.last_offset,
            size_bytes=size,
            first_timestamp=scan.first_timestamp,
            max_timestamp=scan.max_timestamp,
            record_count=scan.record_count,
            checksum=checksum,
            key=seg_key,
            index_key=index_key,
            index_checksum=crc32c_hex(scan.index),
            uploaded_at_ms=now_ms(),
        )
        return UploadResult(Outcome.OK, meta)

    async def store_manifest(
        self, state: PartitionState, manifest: PartitionManifest
    ) -> UploadResult:
        """Stage 4: PUT the manifest; only then does ``state.manifest`` change."""
        body = dump_partition_manifest(manifest)
        try:
            await self._store.put(state.manifest_key, body)
        except StoreError as exc:
            self._stats.manifest_errors += 1
            outcome = Outcome.RETRY if exc.retriable else Outcome.FAILED
            return UploadResult(
                outcome, error=f"manifest of {state.topic}-{state.partition} not stored: {exc}"
            )
        self._stats.manifest_writes += 1
        self._stats.uploaded_bytes += len(body)
        state.manifest = manifest
        state.last_upload_ms = now_ms()
        await self._on_manifest_stored(manifest)
        return UploadResult(Outcome.OK)
