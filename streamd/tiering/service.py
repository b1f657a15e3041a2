"""The tiering service: what the broker and the Kafka handlers call.

It owns the object store, the chunk cache, the uploader and the remote reader, and one
:class:`PartitionState` per partition of every topic with ``remote.storage.enable`` (and of every
topic that has archived data this session). Decisions recorded here:

- **Scheduling.** An apscheduler interval job (``tiering.upload_interval_ms``) starts one *tick*
  unless the previous one is still running. A tick loads missing manifests, stores pending topic
  manifests, syncs every tiered partition (uploader pipeline), applies total retention to the
  archive, retries pending object deletions and runs the ``tick_hooks`` (cluster metadata).
  Nothing in a tick raises, and one partition's failure (an unreadable manifest, a refused
  upload, a bug) never stops the others nor the hooks: failures are recorded per partition
  (admin API, ``/v1/health`` degraded, metrics, one log line per new error) and retried.
- **Manifest loading.** A manifest that cannot be read (unreachable bucket, checksum mismatch,
  unknown format) leaves the partition serving its local copy and uploading nothing, reported
  as the partition's error until a later tick reads it. A manifest *missing* from the bucket
  while the local copy lists archived objects is never replaced by an empty one (that would
  forget the archive and let consumers skip it): if every object the copy names is in the
  bucket, the copy is stored back (put-if-absent) and the event reported (``notice``);
  otherwise the partition reports the missing objects and uploads nothing. A missing manifest
  with no (or an empty) copy starts a new history with a fresh incarnation; archived objects
  found under the prefix without a manifest are reported, never adopted or overwritten.
- **Store probe.** The bucket is probed (HEAD bucket) at start and on every tick while it is
  failing or no partition is tiered, so ``/v1/health`` reports an unusable bucket before any
  topic uses it.
- **Shutdown.** :meth:`archive_tail` rolls every tiered partition's active segment and archives
  it within ``tiering.shutdown_upload_timeout_ms``, so a planned stop loses nothing on restore.
  What a transaction still open holds back (from the partition's last stable offset on, see
  :mod:`streamd.tiering.candidates`) is never archived: it stays on local disk, and the
  shutdown warning names the offset it starts at.
- **Lag.** ``/v1/health`` and the metrics count what is not archived below the last stable
  offset as upload lag, and what lies from it on as *waiting* (open transactions: not a fault);
  ``/v1/topics/{t}/storage`` reports each partition's ``last_stable_offset`` and
  ``uploads_waiting_for_lso`` (sealed segments held back) next to ``pending_uploads``.
- **Local deletion veto (invariant 4).** ``LogManager.tiering_veto`` is set to
  :meth:`may_delete_local`: a tiered segment may leave local disk only when the stored manifest
  covers its last offset. Without a loaded manifest nothing is covered. A compacted topic's
  segment must also have been cleaned and its archived copy be the cleaned one
  (:mod:`streamd.tiering.recompact`).
- **Total retention (invariant 5)** runs against the manifest: advance the remote start, store
  the manifest, then delete the objects (retried until done; a crash in between leaves
  unreferenced objects, never dangling references). As in Kafka, the partition's log start
  follows: local segments below the new remote start are expired too.
- **Offsets.** earliest (-2) = the remote start when the partition has archived segments below
  its local start, else the local start; -4 = local start; -5 = last archived offset (-1: none).
- **Topic manifests** (topic id, partition count, topic overrides) are written in the background
  on create/alter/add-partitions of tiered topics, so CreateTopics never waits for the bucket.
- **Borrowed archives** (:attr:`TieringService.borrowed`, read replicas): a replica topic is
  never tracked or archived here; the offsets it (or the inherited history of a promoted
  replica) serves from another broker's store lie below this broker's own archive, so reads,
  prefetches, earliest/latest and timestamp lookups ask the borrowed manifest first.
- **DeleteTopics** forgets the topic at once; with ``tiering.delete_on_topic_delete`` every object
  under its partitions' prefixes and its topic manifest is deleted in the background (after any
  in-flight upload of those partitions finished), retried on later ticks until it succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from streamd.errors import OffsetOutOfRange, RemoteStorageError
from streamd.log.manager import LogManager, Topic
from streamd.log.partition import PartitionLog
from streamd.log.segment import Segment
from streamd.log.txn_index import AbortedTxn
from streamd.tiering import keys
from streamd.tiering.cache import ChunkCache
from streamd.tiering.manifest import (
    ManifestError,
    PartitionManifest,
    SegmentMeta,
    TopicManifest,
    advance_remote_start,
    delete_records_before,
    dump_partition_manifest,
    dump_topic_manifest,
    empty_manifest,
    load_partition_manifest,
    with_incarnation,
)
from streamd.tiering.partition_state import ManifestCopies, PartitionState
from streamd.tiering.recompact import Compaction, NoCleaner, may_leave_local_disk, stale_units
from streamd.tiering.remote_reader import RemoteReader
from streamd.tiering.retention import plan_remote_start
from streamd.tiering.stats import TieringStats
from streamd.tiering.store import VERBS, ObjectExists, ObjectNotFound, ObjectStore, StoreError
from streamd.tiering.uploader import Outcome, Uploader, select

log = logging.getLogger("streamd.tiering")

Family = tuple[str, str, str, list[tuple[dict[str, str], float]]]
LOAD_CONCURRENCY = 16


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class BorrowedArchives(Protocol):
    """Archived offsets this broker serves from another broker's store: read replicas, and
    the history a promoted replica inherited (:mod:`streamd.tiering.readreplica`). Their
    offsets lie below everything this broker archives itself."""

    def manifest(self, topic: str, partition: int) -> PartitionManifest | None: ...

    async def read(
        self, topic: str, partition: int, offset: int, max_bytes: int, min_one: bool, *,
        below: int | None = None,
    ) -> bytes | memoryview: ...

    def prefetch(self, topic: str, partition: int, offset: int) -> None: ...

    async def offset_for_timestamp(
        self, topic: str, partition: int, timestamp: int, below: int
    ) -> tuple[int, int] | None: ...

    async def on_topic_deleted(self, name: str) -> None: ...

    async def delete_records(self, topic: str, partition: int, offset: int) -> None: ...

    async def aborted_transactions(
        self, topic: str, partition: int, fetch_offset: int, upper: int
    ) -> tuple[list[AbortedTxn], bool]: ...

    def describe(self, name: str, report: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class TieringSettings:
    upload_interval_ms: int = 10_000
    upload_concurrency: int = 4
    read_ahead_chunks: int = 2
    delete_on_topic_delete: bool = True
    merge_target_bytes: int = 0
    segment_max_upload_interval_ms: int = 3_600_000
    shutdown_upload_timeout_ms: int = 30_000
    fail_after_segment_upload: bool = False


class TieringService:
    def __init__(
        self,
        store: ObjectStore,
        logs: LogManager,
        cache: ChunkCache,
        *,
        manifest_dir: Path,
        settings: TieringSettings | None = None,
        compaction: Compaction | None = None,
    ) -> None:
        self.store = store
        self.logs = logs
        self.cache = cache
        self.settings = settings or TieringSettings()
        self.delete_on_topic_delete = self.settings.delete_on_topic_delete
        self.stats = TieringStats()
        self._copies = ManifestCopies(manifest_dir)
        self._states: dict[tuple[str, int], PartitionState] = {}
        self._topic_manifests_pending: set[str] = set()
        self._deletions: dict[tuple[str, str], int] = {}
        self._uploader = Uploader(
            store,
            self.stats,
            concurrency=self.settings.upload_concurrency,
            on_manifest_stored=self._save_copy,
            merge_target_bytes=self.settings.merge_target_bytes,
            max_upload_interval_ms=self.settings.segment_max_upload_interval_ms,
            fail_after_segment_upload=self.settings.fail_after_segment_upload,
            cleaned_offset=(compaction or NoCleaner()).cleaned_offset,
            invalidate=cache.invalidate,
        )
        self._compaction: Compaction = compaction or NoCleaner()
        """The log cleaner's view of compacted topics (see :mod:`streamd.tiering.recompact`)."""
        self._reader = RemoteReader(
            store, cache, self.stats, read_ahead_chunks=self.settings.read_ahead_chunks
        )
        self._scheduler: Any = None
        self._tick_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._load_sem = asyncio.Semaphore(LOAD_CONCURRENCY)
        self.ticks = 0
        self.store_error: str | None = None
        """Why the last probe of the bucket failed (None: it answered)."""
        self.tick_hooks: list[Callable[[], Awaitable[None]]] = []
        """Run at the end of every tick (the cluster metadata archive); they must not raise."""
        self.borrowed: BorrowedArchives | None = None
        """Read replicas: consulted first for offsets below this broker's own archive."""

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self, *, schedule: bool = True) -> None:
        """Install the local-deletion veto, track tiered partitions, start the upload job and a
        first tick that loads the manifests (unless ``schedule`` is False: tests drive
        :meth:`tick` themselves)."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self.logs.tiering_veto = self.may_delete_local
        await self.probe_store()
        await self._refresh_topics(load=False)
        self._topic_manifests_pending.update(
            name for name, t in self.logs.topics().items() if t.config.remote_storage_enable
        )
        if not schedule:
            return
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        scheduler.add_job(
            self.kick,
            "interval",
            seconds=max(1, self.settings.upload_interval_ms) / 1000,
            id="tiering-upload",
            max_instances=1,
            coalesce=True,
        )
        scheduler.start()
        self._scheduler = scheduler
        await self.kick()

    def set_upload_interval(self, interval_ms: int) -> None:
        """Reschedule the upload job (``tiering.upload_interval_ms`` changed at runtime)."""
        self.settings = replace(self.settings, upload_interval_ms=interval_ms)
        if self._scheduler is not None:
            self._scheduler.reschedule_job(
                "tiering-upload", trigger="interval", seconds=max(1, interval_ms) / 1000
            )

    async def kick(self) -> None:
        """The scheduled job: start a tick unless one is still running."""
        if self._tick_task is None or self._tick_task.done():
            self._tick_task = asyncio.create_task(self.tick())

    async def close(self) -> None:
        if self._scheduler is not None:
            with contextlib.suppress(Exception):
                self._scheduler.shutdown(wait=False)
            self._scheduler = None
        tasks = [t for t in (self._tick_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._reader.close()
        if getattr(self.logs, "tiering_veto", None) == self.may_delete_local:
            self.logs.tiering_veto = None
        await self.store.close()

    # ---- the tick ------------------------------------------------------------------------------

    async def tick(self) -> None:
        self.ticks += 1
        try:
            if self.store_error is not None or not self._states:
                await self.probe_store()
            await self._refresh_topics()
            for name in list(self._topic_manifests_pending):
                topic = self.logs.get(name)
                if topic is None:
                    self._topic_manifests_pending.discard(name)
                else:
                    await self._write_topic_manifest(topic)
            jobs = []
            for topic in self.logs.topics().values():
                for index, plog in enumerate(topic.partitions):
                    state = self._states.get((topic.name, index))
                    if state is not None:
                        jobs.append(self._tick_partition(topic, state, plog))
            await asyncio.gather(*jobs)
            for (name, topic_id), count in list(self._deletions.items()):
                await self._delete_topic_objects(name, topic_id, count)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("tiering tick failed; retrying on the next one")
        for hook in list(self.tick_hooks):
            try:
                await hook()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tiering tick hook failed; retrying on the next tick")

    async def probe_store(self, timeout_s: float = 10.0) -> bool:
        """HEAD the bucket; record why it is unusable (``/v1/health``). Never raises."""
        try:
            await asyncio.wait_for(self.store.check(), timeout_s)
        except (RemoteStorageError, TimeoutError) as exc:
            message = f"object store {self.store.description} is not usable: {exc or 'timed out'}"
            if message != self.store_error:
                log.error("tiered storage: %s; local data is kept until archiving succeeds",
                          message)
            self.store_error = message
            return False
        if self.store_error is not None:
            log.info("tiered storage: object store %s is reachable again", self.store.description)
        self.store_error = None
        return True

    async def _tick_partition(
        self, topic: Topic, state: PartitionState, plog: PartitionLog, *, seal: bool = False
    ) -> None:
        """One partition's share of a tick; whatever goes wrong is recorded on its state."""
        try:
            await self._sync_partition(topic, state, plog, seal=seal)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("tiering of %s-%d failed", state.topic, state.partition)
            state.note_error(f"{type(exc).__name__}: {exc}")

    async def _sync_partition(
        self, topic: Topic, state: PartitionState, plog: PartitionLog, *, seal: bool
    ) -> None:
        if not state.loaded:
            await self._load_manifest(state)
            if not state.loaded:
                return
        if topic.config.remote_storage_enable:
            result = await self._uploader.sync_partition(state, plog, seal=seal)
            if result.outcome is Outcome.OK:
                state.clear_error()
            elif result.error:
                state.note_error(result.error)
        await self._apply_total_retention(topic, state, plog)
        await self._delete_pending(state)

    async def archive_tail(self, timeout_ms: int | None = None) -> bool:
        """Graceful shutdown: roll every tiered partition's active segment and archive
        everything not archived yet, within ``timeout_ms`` (default
        ``tiering.shutdown_upload_timeout_ms``). Call it after the Kafka side stopped appending
        and before the logs close. Returns whether every partition's tail is archived."""
        timeout_ms = self.settings.shutdown_upload_timeout_ms if timeout_ms is None else timeout_ms
        if self._tick_task is not None and not self._tick_task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._tick_task), timeout_ms / 1000)
        jobs = []
        tails = []
        for topic in self.logs.topics().values():
            if not topic.config.remote_storage_enable:
                continue
            for index, plog in enumerate(topic.partitions):
                state = self._states.get((topic.name, index))
                if state is not None and plog.high_watermark > 0:
                    jobs.append(self._tick_partition(topic, state, plog, seal=True))
                    tails.append((state, plog))
        if not jobs:
            return True
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*jobs), max(0, timeout_ms) / 1000)
        behind = [
            f"{s.topic}-{s.partition} (archived to {s.manifest.last_uploaded_offset}, "
            f"end {p.high_watermark - 1}"
            + (f", open transactions from offset {p.last_stable_offset}"
               if p.last_stable_offset < p.high_watermark else "")
            + ")"
            for s, p in tails
            if s.manifest.last_uploaded_offset < p.high_watermark - 1
        ]
        if behind:
            log.warning(
                "shutdown: %d partition tail(s) not archived within %d ms (kept on local disk): %s",
                len(behind), timeout_ms, ", ".join(behind[:10]),
            )
            return False
        log.info("shutdown: archived the tail of %d tiered partition(s) in %.2fs",
                 len(tails), time.monotonic() - started)
        return True

    async def _refresh_topics(self, *, load: bool = True) -> None:
        """Track every partition of tiered topics; forget topics that no longer exist. New
        partitions start from their local manifest copy; ``load`` fetches the stored manifest
        now (otherwise the next tick does, so that start-up never waits for the bucket)."""
        topics = self.logs.topics()
        for key in [k for k in self._states if k[0] not in topics]:
            del self._states[key]
        to_load = []
        for topic in topics.values():
            topic_id = str(topic.topic_id)
            tracked = any(k[0] == topic.name for k in self._states)
            if topic.config.remote_readreplica:
                continue  # the origin archives it; this broker only reads (readreplica.py)
            if not (topic.config.remote_storage_enable or tracked):
                continue
            for index in range(len(topic.partitions)):
                state = self._states.get((topic.name, index))
                if state is None or state.topic_id != topic_id:
                    state = PartitionState.new(topic.name, topic_id, index)
                    copy = self._copies.load(topic.name, topic_id, index)
                    if copy is not None:
                        state.manifest = copy
                        state.from_copy = True
                    self._states[(topic.name, index)] = state
                    to_load.append(state)
        if load:
            await asyncio.gather(*(self._load_manifest(s) for s in to_load))

    async def _load_manifest(self, state: PartitionState) -> None:
        """Read the partition's manifest from the bucket (see "Manifest loading" above).
        Never raises: failures are recorded on ``state``."""
        async with self._load_sem:
            try:
                data = await self.store.get(state.manifest_key)
                manifest: PartitionManifest | None = load_partition_manifest(data)
            except ObjectNotFound:
                manifest = None
            except (RemoteStorageError, ManifestError) as exc:
                self.stats.manifest_errors += 1
                state.note_error(
                    f"cannot load manifest {state.manifest_key}: {exc}; the partition serves "
                    "its local copy and archives nothing until the manifest is readable"
                )
                return
            try:
                if manifest is None:
                    manifest = await self._manifest_missing(state)
                    if manifest is None:
                        return
            except RemoteStorageError as exc:
                state.note_error(f"cannot check the archive of a missing manifest: {exc}")
                return
        copy = state.manifest if state.from_copy else None
        if (
            copy is not None
            and copy.incarnation
            and copy.segments == manifest.segments[: len(copy.segments)]
        ):
            # This broker's history continues (a restore chose a new incarnation for it, so
            # that the broker it replaced can never write the same keys).
            manifest = replace(manifest, incarnation=copy.incarnation)
        manifest = with_incarnation(manifest)
        async with state.lock:
            if state.loaded:
                # Another load of this partition (the tick's, or the one a topic change
                # started) got there first, and uploads may have moved the manifest on since:
                # replacing it now would forget what they archived.
                return
            state.manifest = manifest
            state.loaded = True
            state.from_copy = False
            state.clear_error()
        await self._save_copy(manifest)

    async def _manifest_missing(self, state: PartitionState) -> PartitionManifest | None:
        """The bucket has no manifest for this partition: recover it from the local copy, or
        start a new history (reporting archived objects that have no manifest). Returns None
        when the partition must not upload (reported as its error)."""
        copy = state.manifest if state.from_copy else None
        listing = {info.key: info.size async for info in self.store.list(state.prefix)}
        segments = sorted(k for k in listing if keys.parse_segment_name(k) is not None)
        if copy is not None and (copy.segments or copy.last_uploaded_offset >= 0):
            missing = [
                key
                for seg in copy.segments
                for key, size in (
                    (seg.key, seg.size_bytes), (seg.index_key, None), (seg.txn_index_key, None)
                )
                if key and (key not in listing or (size is not None and listing[key] != size))
            ]
            if missing:
                state.note_error(
                    f"manifest {state.manifest_key} is missing from the bucket and {len(missing)} "
                    f"object(s) its local copy names are gone too (first: {missing[0]}); "
                    "nothing is archived until an operator repairs the archive"
                )
                return None
            try:
                await self.store.put(
                    state.manifest_key, dump_partition_manifest(copy), if_absent=True
                )
            except ObjectExists:
                return None  # it is back: the next tick reads it
            state.note(
                f"manifest {state.manifest_key} was missing from the bucket; recovered it from "
                f"the local copy ({len(copy.segments)} archived segment(s), offsets "
                f"{copy.remote_start_offset}-{copy.last_uploaded_offset})"
            )
            return copy
        manifest = copy if copy is not None else empty_manifest(
            state.topic, state.topic_id, state.partition
        )
        if segments:
            top = max((keys.parse_segment_name(k) or (0, -1))[1] for k in segments)
            state.note(
                f"{len(segments)} archived segment object(s) under {state.prefix} have no "
                f"manifest (offsets up to {top}); they are not served. New uploads start "
                f"history {manifest.incarnation!r} and never overwrite them"
            )
        return manifest

    async def _save_copy(self, manifest: Any) -> None:
        try:
            await asyncio.to_thread(self._copies.save, manifest)
        except OSError as exc:
            log.warning("cannot keep a local copy of a manifest: %s", exc)

    async def _apply_total_retention(
        self, topic: Topic, state: PartitionState, plog: PartitionLog
    ) -> None:
        new_start = self._retention_due(topic, state.manifest, plog)
        if new_start is None:
            return
        try:
            advanced = await self._move_remote_start(
                state, lambda m: advance_remote_start(m, new_start), "by retention"
            )
        except StoreError as exc:
            state.note_error(str(exc))
            return
        local_cut = min(advanced.remote_start_offset, plog.high_watermark)
        if local_cut > plog.log_start_offset:
            plog.delete_records_before(local_cut)

    @staticmethod
    def _retention_due(
        topic: Topic, manifest: PartitionManifest, plog: PartitionLog
    ) -> int | None:
        """Where total retention would move the remote start now (None: nothing expires)."""
        if not manifest.segments:
            return None
        not_archived = sum(
            s.size for s in plog.segments if s.base_offset > manifest.last_uploaded_offset
        )
        retention_ms, retention_bytes = topic.config.retention_limits
        return plan_remote_start(
            manifest,
            now_ms=now_ms(),
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            local_bytes_not_archived=not_archived,
        )

    async def delete_records(self, topic: str, partition: int, offset: int) -> None:
        """DeleteRecords on a tiered partition: before the local log start moves, the stored
        manifest stops serving every offset below ``offset`` (KIP-405). Objects of segments
        now wholly below it are deleted after the manifest is stored. Raises StoreError when
        the manifest cannot be stored (nothing has changed then)."""
        if self.borrowed is not None:
            await self.borrowed.delete_records(topic, partition, offset)
        state = self._states.get((topic, partition))
        if state is None:
            return
        await self._move_remote_start(
            state, lambda m: delete_records_before(m, offset), "by DeleteRecords"
        )
        self._spawn(self._delete_pending(state))

    async def _move_remote_start(
        self,
        state: PartitionState,
        move: Callable[[PartitionManifest], tuple[PartitionManifest, tuple[SegmentMeta, ...]]],
        why: str,
    ) -> PartitionManifest:
        """Advance the remote start (invariant 5): store the moved manifest first, then queue
        the objects of the segments that fell below it for deletion. Returns the manifest in
        force; raises StoreError when the new one could not be stored (nothing changed)."""
        async with state.lock:
            moved, removed = move(state.manifest)
            if moved is state.manifest:
                return moved

            def doom() -> None:
                for seg in removed:
                    self.cache.invalidate(seg.key)
                    state.pending_deletes += [seg.key, seg.index_key]
                    if seg.txn_index_key:
                        state.pending_deletes.append(seg.txn_index_key)

            stored = await self._uploader.store_manifest(state, moved, then=doom)
            if stored.outcome is not Outcome.OK:
                raise StoreError(stored.error or "manifest not stored", retriable=True)
            log.info(
                "%s-%d: remote start moved to %d %s (%d segments dropped)",
                state.topic, state.partition, moved.remote_start_offset, why, len(removed),
            )
            return moved

    async def _delete_pending(self, state: PartitionState) -> None:
        if not state.pending_deletes:
            return
        doomed = list(state.pending_deletes)
        try:
            await self.store.delete_many(doomed)
        except StoreError as exc:
            self.stats.delete_errors += 1
            state.note_error(f"cannot delete expired objects: {exc}")
            return
        self.stats.deleted_objects += len(doomed)
        done = set(doomed)
        state.pending_deletes = [k for k in state.pending_deletes if k not in done]

    # ---- the veto ------------------------------------------------------------------------------

    def may_delete_local(self, topic: str, partition: int, segment: Segment) -> bool:
        state = self._states.get((topic, partition))
        if state is None or not state.covers(segment.last_offset):
            return False
        local = self.logs.get(topic)
        if local is None or not local.config.compact or partition >= len(local.partitions):
            return True
        plog = local.partitions[partition]
        compaction = self._compaction
        return compaction.settled(plog, segment) and may_leave_local_disk(
            segment, plog.segments, state.manifest, compaction.cleaned_offset(plog)
        )

    # ---- topic events --------------------------------------------------------------------------

    async def on_topic_changed(self, topic: Topic | None) -> None:
        if topic is None or not topic.config.remote_storage_enable:
            return
        if topic.config.remote_readreplica:
            return
        self._topic_manifests_pending.add(topic.name)
        self._spawn(self._topic_changed(topic))

    async def _topic_changed(self, topic: Topic) -> None:
        await self._refresh_topics()
        await self._write_topic_manifest(topic)

    async def _write_topic_manifest(self, topic: Topic) -> None:
        manifest = TopicManifest(
            topic=topic.name,
            topic_id=str(topic.topic_id),
            partition_count=len(topic.partitions),
            configs=dict(topic.overrides),
        )
        try:
            await self.store.put(
                keys.topic_manifest_key(topic.name, str(topic.topic_id)),
                dump_topic_manifest(manifest),
            )
        except StoreError as exc:
            log.warning("topic manifest of %s not stored (will retry): %s", topic.name, exc)
            return
        self._topic_manifests_pending.discard(topic.name)

    async def on_topic_deleted(self, topic: Topic) -> None:
        states = [s for k, s in self._states.items() if k[0] == topic.name]
        for state in states:
            del self._states[(state.topic, state.partition)]
        self._topic_manifests_pending.discard(topic.name)
        await asyncio.to_thread(self._copies.drop_topic, topic.name)
        if self.borrowed is not None:
            await self.borrowed.on_topic_deleted(topic.name)
        if not self.delete_on_topic_delete or topic.config.remote_readreplica:
            return  # a read replica has no objects of its own
        topic_id = str(topic.topic_id)
        self._deletions[(topic.name, topic_id)] = len(topic.partitions)
        self._spawn(self._delete_after_uploads(topic.name, topic_id, states))

    async def _delete_after_uploads(
        self, name: str, topic_id: str, states: list[PartitionState]
    ) -> None:
        for state in states:
            async with state.lock:
                pass
        await self._delete_topic_objects(name, topic_id, len(states))

    async def _delete_topic_objects(self, name: str, topic_id: str, partitions: int) -> None:
        if (name, topic_id) not in self._deletions:
            return
        try:
            doomed = [keys.topic_manifest_key(name, topic_id)]
            for index in range(partitions):
                prefix = keys.partition_prefix(name, topic_id, index)
                doomed += [info.key async for info in self.store.list(prefix)]
            await self.store.delete_many(doomed)
        except StoreError as exc:
            self.stats.delete_errors += 1
            log.warning("objects of deleted topic %s not deleted yet (will retry): %s", name, exc)
            return
        self.stats.deleted_objects += len(doomed)
        self._deletions.pop((name, topic_id), None)
        log.info("deleted %d objects of topic %s from %s", len(doomed), name,
                 self.store.description)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- the Kafka side ------------------------------------------------------------------------

    def _borrowed(self, topic: str, partition: int) -> PartitionManifest | None:
        return None if self.borrowed is None else self.borrowed.manifest(topic, partition)

    def earliest_offset(self, topic: str, partition: int, plog: PartitionLog) -> int:
        local = plog.log_start_offset
        state = self._states.get((topic, partition))
        if state is not None and state.manifest.segments:
            local = min(state.manifest.remote_start_offset, local)
        borrowed = self._borrowed(topic, partition)
        if borrowed is not None and borrowed.segments:
            local = min(borrowed.remote_start_offset, local)
        return local

    def archived_bytes(self, topic: str, partition: int) -> int:
        """Bytes of this broker's own archive of a partition (0: none)."""
        state = self._states.get((topic, partition))
        return 0 if state is None else state.manifest.size_bytes

    def latest_tiered_offset(self, topic: str, partition: int) -> int:
        state = self._states.get((topic, partition))
        own = -1 if state is None else state.manifest.last_uploaded_offset
        borrowed = self._borrowed(topic, partition)
        return max(own, -1 if borrowed is None else borrowed.last_uploaded_offset)

    async def read(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_bytes: int,
        min_one: bool,
        *,
        ready_bytes: int = 0,
    ) -> bytes | memoryview:
        """Archived batches from ``offset`` (see :meth:`RemoteReader.read`; ``ready_bytes``:
        what the Fetch still needs for its ``min_bytes``)."""
        borrowed = self._borrowed(topic, partition)
        if borrowed is not None and offset <= borrowed.last_uploaded_offset:
            assert self.borrowed is not None
            local_start = self._local_start(topic, partition)
            return await self.borrowed.read(
                topic, partition, offset, max_bytes, min_one, below=local_start
            )
        state = self._states.get((topic, partition))
        if state is None:
            raise OffsetOutOfRange(f"offset {offset} of {topic}-{partition} is not archived")
        local = self.logs.get(topic)
        below = None
        if local is not None and partition < len(local.partitions):
            below = local.partitions[partition].log_start_offset
        return await self._reader.read(
            state.manifest, offset, max_bytes, min_one, below=below, ready_bytes=ready_bytes
        )

    def _local_start(self, topic: str, partition: int) -> int | None:
        local = self.logs.get(topic)
        if local is None or partition >= len(local.partitions):
            return None
        return local.partitions[partition].log_start_offset

    def prefetch(self, topic: str, partition: int, offset: int) -> None:
        """Start loading what a remote read of ``offset`` needs, without waiting (a Fetch over
        several archived partitions overlaps their round trips this way)."""
        borrowed = self._borrowed(topic, partition)
        if borrowed is not None and offset <= borrowed.last_uploaded_offset:
            assert self.borrowed is not None
            self.borrowed.prefetch(topic, partition, offset)
            return
        state = self._states.get((topic, partition))
        if state is not None:
            self._reader.prefetch(state.manifest, offset)

    async def aborted_transactions(
        self, topic: str, partition: int, fetch_offset: int, upper: int
    ) -> tuple[list[AbortedTxn], bool]:
        """Aborted transactions in ``[fetch_offset, upper)`` from archived segments' indexes,
        and whether that settles it (else the local segments' indexes follow)."""
        found: list[AbortedTxn] = []
        borrowed = self._borrowed(topic, partition)
        if borrowed is not None and fetch_offset <= borrowed.last_uploaded_offset:
            assert self.borrowed is not None
            found, complete = await self.borrowed.aborted_transactions(
                topic, partition, fetch_offset, upper
            )
            if complete:
                return found, True
        state = self._states.get((topic, partition))
        if state is None:
            return found, False
        more, complete = await self._reader.aborted_transactions(
            state.manifest, fetch_offset, upper
        )
        return found + more, complete

    async def offset_for_timestamp(
        self, topic: str, partition: int, plog: PartitionLog, timestamp: int
    ) -> tuple[int, int] | None:
        borrowed = self._borrowed(topic, partition)
        if borrowed is not None and borrowed.segments:
            assert self.borrowed is not None
            found = await self.borrowed.offset_for_timestamp(
                topic, partition, timestamp, plog.log_start_offset
            )
            if found is not None:
                return found
        state = self._states.get((topic, partition))
        if state is not None and state.manifest.segments:
            found = await self._reader.offset_for_timestamp(
                state.manifest, timestamp, below=plog.log_start_offset
            )
            if found is not None:
                return found
        return await asyncio.to_thread(plog.offset_for_timestamp, timestamp)

    # ---- observability -------------------------------------------------------------------------

    def storage_report(self, name: str) -> dict[str, Any] | None:
        """``GET /v1/topics/{topic}/storage``: one entry per partition."""
        topic = self.logs.get(name)
        if topic is None:
            return None
        parts = []
        for index, plog in enumerate(topic.partitions):
            state = self._states.get((name, index))
            manifest = state.manifest if state is not None else None
            archived = manifest is not None and bool(manifest.segments)
            if topic.config.remote_storage_enable:
                mode = "tiered"
            else:
                mode = "local+archive" if archived else "local"
            pending = waiting = 0
            due = None
            if manifest is not None:
                selection = select(plog, manifest)
                pending, waiting = len(selection.candidates), selection.waiting
                due = self._retention_due(topic, manifest, plog)
            parts.append(
                {
                    "partition": index,
                    "mode": mode,
                    "manifest_loaded": bool(state and state.loaded),
                    "remote_start_offset": (
                        manifest.remote_start_offset if manifest and archived else -1
                    ),
                    "last_uploaded_offset": manifest.last_uploaded_offset if manifest else -1,
                    "earliest_offset": self.earliest_offset(name, index, plog),
                    "local_start_offset": plog.log_start_offset,
                    "high_watermark": plog.high_watermark,
                    "last_stable_offset": plog.last_stable_offset,
                    "local_bytes": plog.size_bytes,
                    "local_segments": len(plog.segments),
                    "remote_bytes": manifest.size_bytes if manifest else 0,
                    "remote_segments": len(manifest.segments) if manifest else 0,
                    "last_upload_ms": state.last_upload_ms if state else -1,
                    "pending_uploads": pending,
                    "uploads_waiting_for_lso": waiting,
                    "pending_deletes": len(state.pending_deletes) if state else 0,
                    "retention_due_offset": -1 if due is None else due,
                    "compacted_reuploads_pending": (
                        len(
                            stale_units(
                                plog.segments,
                                manifest,
                                self._compaction.cleaned_offset(plog),
                                plog.high_watermark,
                            )
                        )
                        if manifest is not None and topic.config.compact
                        else 0
                    ),
                    "errors": state.errors if state else 0,
                    "last_error": state.last_error if state else None,
                    "notice": state.notice if state else None,
                    "blocked": state.blocked if state else None,
                    "incarnation": manifest.incarnation if manifest else None,
                }
            )
        report = {
            "topic": name,
            "topic_id": str(topic.topic_id),
            "remote_storage_enable": topic.config.remote_storage_enable,
            "store": self.store.description,
            "partitions": parts,
        }
        if self.borrowed is not None:
            self.borrowed.describe(name, report)
        return report

    @staticmethod
    def _lag(state: PartitionState, plog: PartitionLog) -> tuple[int, int, int, int]:
        """``(lag offsets, lag bytes, waiting offsets, waiting bytes)`` of one partition: what
        is not archived yet, split at the last stable offset. Offsets from the LSO on wait for
        open transactions (:mod:`streamd.tiering.candidates`, rule 1) and are not upload lag,
        as Kafka's RemoteCopyLag counts only data eligible for upload; so are the bytes of
        segments holding such offsets."""
        archived = max(state.manifest.last_uploaded_offset + 1, plog.log_start_offset)
        hw, lso = plog.high_watermark, plog.last_stable_offset
        lag_bytes = waiting_bytes = 0
        for segment in plog.segments:
            if segment.next_offset <= archived:
                continue
            if lso < hw and segment.next_offset > lso:
                waiting_bytes += segment.size
            else:
                lag_bytes += segment.size
        return (
            max(0, lso - archived), lag_bytes, max(0, hw - max(lso, archived)), waiting_bytes
        )

    def health(self) -> dict[str, Any]:
        """The tiering component of ``GET /v1/health``: "degraded" while the bucket does not
        answer or any partition's last upload (or manifest load) failed or its uploads are
        blocked; lag counts offsets and bytes not yet archived over all tiered partitions
        (below the LSO: ``upload_lag_*``; from it on, held by open transactions, which is not
        a fault: ``upload_waiting_*``)."""
        failing = []
        notices = []
        lag_offsets = lag_bytes = waiting_offsets = waiting_bytes = 0
        for (name, index), state in sorted(self._states.items()):
            topic = self.logs.get(name)
            if topic is None or index >= len(topic.partitions):
                continue
            plog = topic.partitions[index]
            lag = self._lag(state, plog)
            lag_offsets += lag[0]
            lag_bytes += lag[1]
            waiting_offsets += lag[2]
            waiting_bytes += lag[3]
            if state.last_error is not None or state.blocked:
                failing.append(f"{name}-{index}: {state.last_error or state.blocked}")
            if state.notice is not None:
                notices.append(f"{name}-{index}: {state.notice}")
        if self.store_error is not None:
            failing.insert(0, self.store_error)
        return {
            "status": "degraded" if failing else "ok",
            "store": self.store.description,
            "store_reachable": self.store_error is None,
            "tiered_partitions": len(self._states),
            "upload_lag_offsets": lag_offsets,
            "upload_lag_bytes": lag_bytes,
            "upload_waiting_offsets": waiting_offsets,
            "upload_waiting_bytes": waiting_bytes,
            "errors": failing[:10],
            "notices": notices[:10],
        }

    def metric_families(self) -> Iterable[Family]:
        s = self.stats
        cache = self.cache.stats
        lag_offsets: list[tuple[dict[str, str], float]] = []
        lag_bytes: list[tuple[dict[str, str], float]] = []
        waiting_offsets: list[tuple[dict[str, str], float]] = []
        remote_bytes: list[tuple[dict[str, str], float]] = []
        for (name, index), state in sorted(self._states.items()):
            topic = self.logs.get(name)
            if topic is None or index >= len(topic.partitions):
                continue
            plog = topic.partitions[index]
            labels = {"topic": name, "partition": str(index)}
            lag = self._lag(state, plog)
            lag_offsets.append((labels, lag[0]))
            lag_bytes.append((labels, lag[1]))
            waiting_offsets.append((labels, lag[2]))
            remote_bytes.append((labels, state.manifest.size_bytes))

        def counter(name: str, help_text: str, value: float) -> Family:
            return (name, help_text, "counter", [({}, value)])

        requests = self.store.requests
        archived_gb = s.uploaded_bytes / (1 << 30)
        replayed_gb = s.downloaded_bytes / (1 << 30)

        def per_gb(gb: float) -> list[tuple[dict[str, str], float]]:
            return [({"verb": v}, requests.get(v, 0) / gb if gb else 0.0) for v in VERBS]

        def gauge(name: str, help_text: str, value: float) -> Family:
            return (name, help_text, "gauge", [({}, value)])

        return [
            ("streamd_tiering_bucket_requests_total", "Requests sent to the bucket, by verb "
             "(every attempt and multipart part counts).", "counter",
             [({"verb": v}, requests.get(v, 0)) for v in VERBS]),
            ("streamd_tiering_bucket_requests_per_gb_archived", "Bucket requests by verb per "
             "GiB stored in the bucket.", "gauge", per_gb(archived_gb)),
            ("streamd_tiering_bucket_requests_per_gb_replayed", "Bucket requests by verb per "
             "GiB read back from the bucket.", "gauge", per_gb(replayed_gb)),
            counter("streamd_tiering_upload_bytes_total", "Bytes stored in the bucket.",
                    s.uploaded_bytes),
            counter("streamd_tiering_uploaded_segments_total", "Segments archived.",
                    s.uploaded_segments),
            counter("streamd_tiering_reuploaded_segments_total", "Compacted segments archived "
                    "again in place of the objects the log cleaner outdated.",
                    s.reuploaded_segments),
            counter("streamd_tiering_upload_errors_total", "Failed segment uploads.",
                    s.upload_errors),
            counter("streamd_tiering_manifest_writes_total", "Partition manifests stored.",
                    s.manifest_writes),
            counter("streamd_tiering_manifest_errors_total",
                    "Partition manifests that failed to store or to load.", s.manifest_errors),
            counter("streamd_tiering_download_bytes_total", "Bytes read from the bucket.",
                    s.downloaded_bytes),
            counter("streamd_tiering_download_errors_total", "Failed remote reads.",
                    s.download_errors),
            counter("streamd_tiering_remote_reads_total", "Fetches served from the archive.",
                    s.remote_reads),
            counter("streamd_tiering_read_ahead_chunks_total", "Chunks loaded ahead of a reader.",
                    s.read_ahead_chunks),
            counter("streamd_tiering_deleted_objects_total", "Objects deleted.",
                    s.deleted_objects),
            counter("streamd_tiering_delete_errors_total", "Failed object deletions.",
                    s.delete_errors),
            ("streamd_tiering_upload_lag_offsets", "Offsets below the last stable offset not "
             "yet archived.", "gauge", lag_offsets),
            ("streamd_tiering_upload_lag_bytes", "Local bytes not yet archived (except segments "
             "waiting for open transactions).", "gauge", lag_bytes),
            ("streamd_tiering_upload_waiting_offsets", "Offsets from the last stable offset to "
             "the high watermark: not archived until open transactions end.", "gauge",
             waiting_offsets),
            ("streamd_tiering_remote_bytes", "Bytes of archived segments in the manifest.",
             "gauge", remote_bytes),
            counter("streamd_tiering_cache_hits_total", "Remote read cache hits.", cache.hits),
            counter("streamd_tiering_cache_misses_total", "Remote read cache misses.",
                    cache.misses),
            counter("streamd_tiering_cache_evictions_total", "Chunks evicted from the cache.",
                    cache.evictions),
            gauge("streamd_tiering_cache_bytes", "Bytes in the remote read cache.", cache.bytes),
            gauge("streamd_tiering_cache_max_bytes", "Bound of the remote read cache.",
                  self.cache.max_bytes),
        ]

