"""The upload pipeline: find candidates -> upload object -> upload index -> admit into manifest.

One :meth:`Uploader.sync_partition` call moves one partition forward as far as it can:

1. roll the active segment if it has been open for ``segment.ms`` (idle or not), or if its
   oldest data is older than ``tiering.segment_max_upload_interval_ms``, so that a quiet
   partition's tail gets archived too (this bounds what a wipe and restore can lose). The
   latter roll (and the shutdown's) is skipped while a transaction is open on the partition:
   the rolled segment could not be archived before it ends anyway (see 2.), and rolling would
   only cut the log into more small segments;
2. select candidates (:mod:`streamd.tiering.candidates`): sealed, durable, below the last
   stable offset, not yet archived, and ending where no aborted transaction's marker is still
   to come (so the archive never holds a transaction it does not also decide);
   adjacent candidates smaller than ``merge_target_bytes`` are grouped into one *run* that
   becomes one object (Redpanda's adjacent segment merging: a replay then costs one index GET
   and few data GETs per run instead of per small segment);
3. for each run: read and validate its bytes off the event loop, PUT the object, then its index
   object (:mod:`streamd.tiering.segment_index`). Up to ``concurrency`` runs of a partition
   upload at once (a shared semaphore bounds all partitions together). Keys carry the
   manifest's incarnation and both PUTs are conditional (invariant 9): when the key exists
   already, the object is accepted only if it holds exactly our bytes (size and CRC32C stamp:
   a retry after a crash or a lost response); different bytes are never replaced, the run
   fails and the partition reports the conflict;
4. admit the uploaded runs, in offset order, into the manifest and PUT it. Only now does the
   partition's ``manifest`` (what local retention and remote reads trust) change (invariant 3).
   A manifest is stored only when its end is a stable end (rule 2 of the candidates module):
   runs admitted past the last such end wait for the next store, or are uploaded again (same
   keys, same bytes) by the next sync if this one fails first.

Stages return :class:`UploadResult` values instead of raising across task boundaries: ``OK``,
``RETRY`` (the store failed; try again next tick) or ``FAILED`` (local data or the manifest is
not fit to archive, or the bucket holds other bytes under our key; reported, also retried next
tick in case the cause was transient). A partition is synced by one task at a time (its state
lock).

``fail_after_segment_upload`` is a test hook (``tiering.debug.fail_after_segment_upload``): the
process exits right after the first segment object is stored, before its index and manifest,
to simulate a crash in the middle of the pipeline.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from streamd.errors import StreamdError
from streamd.log.partition import PartitionLog
from streamd.log.segment import Segment
from streamd.tiering import keys
from streamd.tiering.candidates import Selection, select_candidates
from streamd.tiering.checksum import crc32c_hex
from streamd.tiering.manifest import (
    ManifestConflict,
    PartitionManifest,
    SegmentMeta,
    add_segment,
    dump_partition_manifest,
)
from streamd.tiering.partition_state import PartitionState
from streamd.tiering.segment_index import scan_files
from streamd.tiering.stats import TieringStats
from streamd.tiering.store import ObjectExists, ObjectStore, StoreError

log = logging.getLogger("streamd.tiering")

MANIFEST_EVERY = 16
"""Store the manifest at least every this many admitted objects within one sync."""


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
    return time.time_ns() // 1_000_000


def group_runs(segments: Sequence[Segment], target_bytes: int) -> list[list[Segment]]:
    """Consecutive candidates grouped into objects of at most ``target_bytes`` (a segment
    larger than that alone); ``target_bytes <= 0`` uploads every segment on its own."""
    runs: list[list[Segment]] = []
    size = 0
    for segment in segments:
        if runs and size + segment.size <= target_bytes:
            runs[-1].append(segment)
            size += segment.size
        else:
            runs.append([segment])
            size = segment.size
    return runs


def select(plog: PartitionLog, manifest: PartitionManifest) -> Selection[Segment]:
    """Stage 1 on the partition's log as it is now (see :mod:`streamd.tiering.candidates`)."""
    segments = plog.segments
    end = manifest.next_offset
    aborted = [e for s in segments if s.next_offset > end for e in s.txn_index.entries]
    return select_candidates(
        segments, manifest, plog.high_watermark,
        last_stable_offset=plog.last_stable_offset, aborted=aborted,
    )


class Uploader:
    def __init__(
        self,
        store: ObjectStore,
        stats: TieringStats,
        *,
        concurrency: int,
        on_manifest_stored: Callable[[PartitionManifest], Awaitable[None]],
        merge_target_bytes: int = 0,
        max_upload_interval_ms: int = -1,
        fail_after_segment_upload: bool = False,
    ) -> None:
        self._store = store
        self._stats = stats
        self._concurrency = max(1, concurrency)
        self._sem = asyncio.Semaphore(self._concurrency)
        self._on_manifest_stored = on_manifest_stored
        self.merge_target_bytes = merge_target_bytes
        self.max_upload_interval_ms = max_upload_interval_ms
        self._crash_hook = fail_after_segment_upload

    async def sync_partition(
        self, state: PartitionState, plog: PartitionLog, *, seal: bool = False
    ) -> SyncResult:
        """Archive what is due; ``seal`` rolls the active segment first whatever its age (a
        graceful shutdown archives the tail)."""
        async with state.lock:
            return await self._sync(state, plog, seal)

    def _roll_if_due(self, plog: PartitionLog, seal: bool) -> None:
        now = now_ms()
        if plog.roll_if_due(now):
            return
        active = plog.active
        if active.is_empty or plog.last_stable_offset < plog.high_watermark:
            return
        interval = self.max_upload_interval_ms
        if seal or (interval >= 0 and now - active.created_ms >= interval):
            plog.seal_active()

    async def _sync(self, state: PartitionState, plog: PartitionLog, seal: bool) -> SyncResult:
        if not state.loaded:
            return SyncResult(Outcome.RETRY, error="manifest not loaded from the bucket yet")
        self._roll_if_due(plog, seal)
        selection = select(plog, state.manifest)
        state.blocked = selection.blocked
        state.pending_uploads = len(selection.candidates)
        runs = group_runs(selection.candidates, self.merge_target_bytes)
        manifest = state.manifest
        uploaded = 0
        stable = manifest  # the last admitted manifest that ends at a stable end
        admitted = unstable = 0  # segments admitted into ``stable``, and after it
        failure: SyncResult | None = None
        for window in range(0, len(runs), self._concurrency):
            batch = runs[window : window + self._concurrency]
            results = await asyncio.gather(*(self.upload_run(state, run) for run in batch))
            for run, result in zip(batch, results, strict=True):
                if result.outcome is not Outcome.OK or result.meta is None:
                    failure = SyncResult(result.outcome, uploaded, result.error)
                    break
                try:
                    manifest = add_segment(manifest, result.meta)
                except ManifestConflict as exc:
                    failure = SyncResult(Outcome.FAILED, uploaded, str(exc))
                    break
                unstable += len(run)
                if not selection.stable_end(manifest.next_offset):
                    continue
                stable, admitted, unstable = manifest, admitted + unstable, 0
                if admitted >= MANIFEST_EVERY:
                    stored = await self.store_manifest(state, stable)
                    if stored.outcome is not Outcome.OK:
                        return SyncResult(stored.outcome, uploaded, stored.error)
                    uploaded += admitted
                    admitted = 0
            if failure is not None:
                break
        if admitted:
            stored = await self.store_manifest(state, stable)
            if stored.outcome is not Outcome.OK:
                return SyncResult(stored.outcome, uploaded, stored.error)
            uploaded += admitted
        state.pending_uploads = max(0, state.pending_uploads - uploaded)
        if uploaded:
            log.info(
                "%s-%d: archived %d segment(s), now up to offset %d",
                state.topic, state.partition, uploaded, state.manifest.last_uploaded_offset,
            )
        if failure is not None:
            return SyncResult(failure.outcome, uploaded, failure.error)
        if selection.blocked:
            return SyncResult(Outcome.FAILED, uploaded, selection.blocked)
        return SyncResult(Outcome.OK, uploaded)

    async def upload_segment(self, state: PartitionState, segment: Segment) -> UploadResult:
        """Stages 2 and 3 for one segment on its own."""
        return await self.upload_run(state, [segment])

    async def upload_run(self, state: PartitionState, run: Sequence[Segment]) -> UploadResult:
        """Stages 2 and 3: the object of ``run`` (adjacent segments), then its index object.
        Nothing in the manifest yet."""
        first, last = run[0], run[-1]
        where = (
            f"{'segments' if len(run) > 1 else 'segment'} {first.base_offset}-"
            f"{last.last_offset} of {state.topic}-{state.partition}"
        )
        async with self._sem:
            fds: list[int] = []
            try:
                # Private descriptors: a segment may be closed (topic deleted) meanwhile.
                for segment in run:
                    fds.append(segment.file.dup())
            except (OSError, StreamdError) as exc:
                for fd in fds:
                    os.close(fd)
                self._stats.upload_errors += 1
                return UploadResult(Outcome.FAILED, error=f"cannot archive {where}: {exc}")
            try:
                return await self._upload(state, run, fds, where)
            finally:
                for fd in fds:
                    os.close(fd)

    async def _upload(
        self, state: PartitionState, run: Sequence[Segment], fds: list[int], where: str
    ) -> UploadResult:
        files = [(fd, segment.size) for fd, segment in zip(fds, run, strict=True)]
        size = sum(n for _, n in files)
        base = run[0].base_offset
        try:
            scan, checksum = await asyncio.to_thread(scan_files, files, base)
        except (StreamdError, OSError) as exc:
            self._stats.upload_errors += 1
            return UploadResult(Outcome.FAILED, error=f"cannot archive {where}: {exc}")
        if scan.last_offset != run[-1].last_offset:
            self._stats.upload_errors += 1
            return UploadResult(
                Outcome.FAILED,
                error=f"{where} holds offsets up to {scan.last_offset}, expected "
                f"{run[-1].last_offset}",
            )
        incarnation = state.manifest.incarnation
        seg_key = keys.segment_key(
            state.topic, state.topic_id, state.partition, base, scan.last_offset,
            incarnation=incarnation,
        )
        index_key = keys.segment_index_key(
            state.topic, state.topic_id, state.partition, base, scan.last_offset,
            incarnation=incarnation,
        )
        index_checksum = crc32c_hex(scan.index)
        try:
            # Streamed from the files in parts: memory stays bounded by one part.
            try:
                await self._store.put_files(seg_key, files, checksum=checksum, if_absent=True)
                self._stats.uploaded_bytes += size
            except ObjectExists:
                await self._accept_existing(seg_key, size, checksum)
            for segment in run:
                segment.file.drop_behind(0, segment.size)
            if self._crash_hook:
                log.error("tiering.debug.fail_after_segment_upload: exiting after %s", seg_key)
                os._exit(75)
            try:
                await self._store.put(index_key, scan.index, if_absent=True)
                self._stats.uploaded_bytes += len(scan.index)
            except ObjectExists:
                await self._accept_existing(index_key, len(scan.index), index_checksum)
            txn_key, txn_checksum = await self._upload_txn_index(seg_key, run)
        except _Conflict as exc:
            self._stats.upload_errors += 1
            return UploadResult(Outcome.FAILED, error=f"upload of {where} refused: {exc}")
        except StoreError as exc:
            self._stats.upload_errors += 1
            outcome = Outcome.RETRY if exc.retriable else Outcome.FAILED
            return UploadResult(outcome, error=f"upload of {where} failed: {exc}")
        self._stats.uploaded_segments += len(run)
        meta = SegmentMeta(
            base_offset=base,
            last_offset=scan.last_offset,
            size_bytes=size,
            first_timestamp=scan.first_timestamp,
            max_timestamp=scan.max_timestamp,
            record_count=scan.record_count,
            checksum=checksum,
            key=seg_key,
            index_key=index_key,
            index_checksum=index_checksum,
            uploaded_at_ms=now_ms(),
            txn_index_key=txn_key,
            txn_index_checksum=txn_checksum,
        )
        return UploadResult(Outcome.OK, meta)

    async def _upload_txn_index(self, seg_key: str, run: Sequence[Segment]) -> tuple[str, str]:
        """The aborted-transaction index of the segment(s) in one object, when there is one:
        a read_committed replay from the bucket skips aborted records as the local log does.
        The entries of adjacent segments concatenate in marker order."""
        data = b"".join(s.txn_index.to_bytes() for s in run)
        if not data:
            return "", ""
        key = keys.txn_index_key(seg_key)
        checksum = crc32c_hex(data)
        try:
            await self._store.put(key, data, if_absent=True)
            self._stats.uploaded_bytes += len(data)
        except ObjectExists:
            await self._accept_existing(key, len(data), checksum)
        return key, checksum

    async def _accept_existing(self, key: str, size: int, checksum: str) -> None:
        """The key exists: fine if it holds our bytes (a retried upload), else :class:`_Conflict`
        (invariant 9: an object is never replaced by different bytes)."""
        info = await self._store.head(key)
        if info is None:
            raise StoreError(f"{key} existed a moment ago and is gone now", retriable=True)
        if info.size != size or info.crc32c != checksum:
            raise _Conflict(
                f"the bucket already holds {key} with other bytes ({info.size} bytes, crc32c "
                f"{info.crc32c}; ours: {size} bytes, crc32c {checksum}); it is not replaced. "
                "Another broker may be archiving this partition under the same incarnation"
            )
        log.info("%s is already in the bucket with the same bytes (a retried upload)", key)

    async def store_manifest(
        self,
        state: PartitionState,
        manifest: PartitionManifest,
        *,
        then: Callable[[], None] | None = None,
    ) -> UploadResult:
        """Stage 4: PUT the manifest; only then does ``state.manifest`` change, and ``then``
        runs in the same step (nobody sees the new manifest without its consequences)."""
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
        if then is not None:
            then()
        state.last_upload_ms = now_ms()
        await self._on_manifest_stored(manifest)
        return UploadResult(Outcome.OK)


class _Conflict(StoreError):
    """The bucket holds other bytes under a key this partition wants to write."""
