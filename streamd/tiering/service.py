"""The tiering service: what the broker and the Kafka handlers call.

It owns the object store, the chunk cache, the uploader and the remote reader, and one
:class:`PartitionState` per partition of every topic with ``remote.storage.enable`` (and of every
topic that has archived data this session). Decisions recorded here:

- **Scheduling.** An apscheduler interval job (``tiering.upload_interval_ms``) starts one *tick*
  unless the previous one is still running. A tick loads missing manifests, stores pending topic
  manifests, syncs every tiered partition (uploader pipeline), applies total retention to the
  archive, retries pending object deletions and runs the ``tick_hooks`` (cluster metadata).
  Nothing in a tick raises: failures are recorded per partition (admin API, metrics, one log
  line per new error) and retried.
- **Local deletion veto (invariant 4).** ``LogManager.tiering_veto`` is set to
  :meth:`may_delete_local`: a tiered segment may leave local disk only when the stored manifest
  covers its last offset. Without a loaded manifest nothing is covered.
- **Total retention (invariant 5)** runs against the manifest: advance the remote start, store
  the manifest, then delete the objects (retried until done; a crash in between leaves
  unreferenced objects, never dangling references). As in Kafka, the partition's log start
  follows: local segments below the new remote start are expired too.
- **Offsets.** earliest (-2) = the remote start when the partition has archived segments below
  its local start, else the local start; -4 = local start; -5 = last archived offset (-1: none).
- **Topic manifests** (topic id, partition count, topic overrides) are written in the background
  on create/alter/add-partitions of tiered topics, so CreateTopics never waits for the bucket.
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
from typing import Any

from streamd.errors import OffsetOutOfRange
from streamd.log.manager import LogManager, Topic
from streamd.log.partition import PartitionLog
from streamd.log.segment import Segment
from streamd.tiering import keys
from streamd.tiering.cache import ChunkCache
from streamd.tiering.candidates import select_candidates
from streamd.tiering.manifest import (
    ManifestError,
    PartitionManifest,
    SegmentMeta,
    TopicManifest,
    advance_remote_start,
    delete_records_before,
    dump_topic_manifest,
    load_partition_manifest,
)
from streamd.tiering.partition_state import ManifestCopies, PartitionState
from streamd.tiering.remote_reader import RemoteReader
from streamd.tiering.retention import plan_remote_start
from streamd.tiering.stats import TieringStats
from streamd.tiering.store import ObjectNotFound, ObjectStore, StoreError
from streamd.tiering.uploader import Outcome, Uploader

log = logging.getLogger("streamd.tiering")

Family = tuple[str, str, str, list[tuple[dict[str, str], float]]]
LOAD_CONCURRENCY = 16


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class TieringSettings:
    upload_interval_ms: int = 10_000
    upload_concurrency: int = 4
    read_ahead_chunks: int = 2
    delete_on_topic_delete: bool = True
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
            fail_after_segment_upload=self.settings.fail_after_segment_upload,
        )
        self._reader = RemoteReader(
            store, cache, self.stats, read_ahead_chunks=self.settings.read_ahead_chunks
        )
        self._scheduler: Any = None
        self._tick_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._load_sem = asyncio.Semaphore(LOAD_CONCURRENCY)
        self.ticks = 0
        self.tick_hooks: list[Callable[[], Awaitable[None]]] = []
        """Run at the end of every tick (the cluster metadata archive); they must not raise."""

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self, *, schedule: bool = True) -> None:
        """Install the local-deletion veto, track tiered partitions, start the upload job and a
        first tick that loads the manifests (unless ``schedule`` is False: tests drive
        :meth:`tick` themselves)."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self.logs.tiering_veto = self.may_delete_local
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
            for hook in list(self.tick_hooks):
                await hook()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("tiering tick failed; retrying on the next one")

    async def _tick_partition(
        self, topic: Topic, state: PartitionState, plog: PartitionLog
    ) -> None:
        if not state.loaded:
            await self._load_manifest(state)
            if not state.loaded:
                return
        if topic.config.remote_storage_enable:
            result = await self._uploader.sync_partition(state, plog)
            if result.outcome is Outcome.OK:
                state.clear_error()
            elif result.error:
                state.note_error(result.error)
        await self._apply_total_retention(topic, state, plog)
        await self._delete_pending(state)

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
            if not (topic.config.remote_storage_enable or tracked):
                continue
            for index in range(len(topic.partitions)):
                state = self._states.get((topic.name, index))
                if state is None or state.topic_id != topic_id:
                    state = PartitionState.new(topic.name, topic_id, index)
                    copy = self._copies.load(topic.name, topic_id, index)
                    if copy is not None:
                        state.manifest = copy
                    self._states[(topic.name, index)] = state
                    to_load.append(state)
        if load:
            await asyncio.gather(*(self._load_manifest(s) for s in to_load))

    async def _load_manifest(self, state: PartitionState) -> None:
        async with self._load_sem:
            try:
                data = await self.store.get(state.manifest_key)
                manifest = load_partition_manifest(data)
            except ObjectNotFound:
                manifest = None
            except (StoreError, ManifestError) as exc:
                state.note_error(f"cannot load manifest {state.manifest_key}: {exc}")
                return
        async with state.lock:
            if state.loaded:
                # Another load of this partition (the tick's, or the one a topic change
                # started) got there first, and uploads may have moved the manifest on since:
                # replacing it now would forget what they archived.
                return
            if manifest is None:
                manifest = PartitionState.new(state.topic, state.topic_id, state.partition).manifest
            state.manifest = manifest
            state.loaded = True
            state.clear_error()
        await self._save_copy(manifest)

    async def _save_copy(self, manifest: Any) -> None:
        try:
            await asyncio.to_thread(self._copies.save, manifest)
        except OSError as exc:
            log.warning("cannot keep a local copy of a manifest: %s", exc)

    async def _apply_total_retention(
        self, topic: Topic, state: PartitionState, plog: PartitionLog
    ) -> None:
        manifest = state.manifest
        if not manifest.segments:
            return
        not_archived = sum(
            s.size for s in plog.segments if s.base_offset > manifest.last_uploaded_offset
        )
        retention_ms, retention_bytes = topic.config.retention_limits
        new_start = plan_remote_start(
            manifest,
            now_ms=now_ms(),
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            local_bytes_not_archived=not_archived,
        )
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

    async def delete_records(self, topic: str, partition: int, offset: int) -> None:
        """DeleteRecords on a tiered partition: before the local log start moves, the stored
        manifest stops serving every offset below ``offset`` (KIP-405). Objects of segments
        now wholly below it are deleted after the manifest is stored. Raises StoreError when
        the manifest cannot be stored (nothing has changed then)."""
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
            stored = await self._uploader.store_manifest(state, moved)
            if stored.outcome is not Outcome.OK:
                raise StoreError(stored.error or "manifest not stored", retriable=True)
            log.info(
                "%s-%d: remote start moved to %d %s (%d segments dropped)",
                state.topic, state.partition, moved.remote_start_offset, why, len(removed),
            )
            for seg in removed:
                self.cache.invalidate(seg.key)
                state.pending_deletes += [seg.key, seg.index_key]
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
        return state is not None and state.covers(segment.last_offset)

    # ---- topic events --------------------------------------------------------------------------

    async def on_topic_changed(self, topic: Topic | None) -> None:
        if topic is None or not topic.config.remote_storage_enable:
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
        if not self.delete_on_topic_delete:
            return
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

    def earliest_offset(self, topic: str, partition: int, plog: PartitionLog) -> int:
        local = plog.log_start_offset
        state = self._states.get((topic, partition))
        if state is None or not state.manifest.segments:
            return local
        return min(state.manifest.remote_start_offset, local)

    def latest_tiered_offset(self, topic: str, partition: int) -> int:
        state = self._states.get((topic, partition))
        return -1 if state is None else state.manifest.last_uploaded_offset

    async def read(
        self, topic: str, partition: int, offset: int, max_bytes: int, min_one: bool
    ) -> bytes | memoryview:
        state = self._states.get((topic, partition))
        if state is None:
            raise OffsetOutOfRange(f"offset {offset} of {topic}-{partition} is not archived")
        return await self._reader.read(state.manifest, offset, max_bytes, min_one)

    async def offset_for_timestamp(
        self, topic: str, partition: int, plog: PartitionLog, timestamp: int
    ) -> tuple[int, int] | None:
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
            pending = 0
            if manifest is not None:
                pending = len(
                    select_candidates(plog.segments, manifest, plog.high_watermark).candidates
                )
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
                    "local_bytes": plog.size_bytes,
                    "local_segments": len(plog.segments),
                    "remote_bytes": manifest.size_bytes if manifest else 0,
                    "remote_segments": len(manifest.segments) if manifest else 0,
                    "last_upload_ms": state.last_upload_ms if state else -1,
                    "pending_uploads": pending,
                    "pending_deletes": len(state.pending_deletes) if state else 0,
                    "errors": state.errors if state else 0,
                    "last_error": state.last_error if state else None,
                    "blocked": state.blocked if state else None,
                }
            )
        return {
            "topic": name,
            "topic_id": str(topic.topic_id),
            "remote_storage_enable": topic.config.remote_storage_enable,
            "store": self.store.description,
            "partitions": parts,
        }

    def health(self) -> dict[str, Any]:
        """The tiering section of ``GET /v1/health``: "degraded" while any partition's last
        upload (or load) attempt failed or its uploads are blocked; lag counts offsets and
        bytes not yet archived over all tiered partitions."""
        failing = []
        lag_offsets = lag_bytes = 0
        for (name, index), state in sorted(self._states.items()):
            topic = self.logs.get(name)
            if topic is None or index >= len(topic.partitions):
                continue
            plog = topic.partitions[index]
            last = state.manifest.last_uploaded_offset
            lag_offsets += max(0, plog.high_watermark - last - 1)
            lag_bytes += sum(x.size for x in plog.segments if x.base_offset > last)
            if state.last_error is not None or state.blocked:
                failing.append(f"{name}-{index}: {state.last_error or state.blocked}")
        return {
            "status": "degraded" if failing else "ok",
            "store": self.store.description,
            "tiered_partitions": len(self._states),
            "upload_lag_offsets": lag_offsets,
            "upload_lag_bytes": lag_bytes,
            "errors": failing[:10],
        }

    def metric_families(self) -> Iterable[Family]:
        s = self.stats
        cache = self.cache.stats
        lag_offsets: list[tuple[dict[str, str], float]] = []
        lag_bytes: list[tuple[dict[str, str], float]] = []
        remote_bytes: list[tuple[dict[str, str], float]] = []
        for (name, index), state in sorted(self._states.items()):
            topic = self.logs.get(name)
            if topic is None or index >= len(topic.partitions):
                continue
            plog = topic.partitions[index]
            labels = {"topic": name, "partition": str(index)}
            last = state.manifest.last_uploaded_offset
            lag_offsets.append((labels, max(0, plog.high_watermark - last - 1)))
            lag_bytes.append((labels, sum(x.size for x in plog.segments if x.base_offset > last)))
            remote_bytes.append((labels, state.manifest.size_bytes))

        def counter(name: str, help_text: str, value: float) -> Family:
            return (name, help_text, "counter", [({}, value)])

        def gauge(name: str, help_text: str, value: float) -> Family:
            return (name, help_text, "gauge", [({}, value)])

        return [
            counter("streamd_tiering_upload_bytes_total", "Bytes stored in the bucket.",
                    s.uploaded_bytes),
            counter("streamd_tiering_uploaded_segments_total", "Segments archived.",
                    s.uploaded_segments),
            counter("streamd_tiering_upload_errors_total", "Failed segment uploads.",
                    s.upload_errors),
            counter("streamd_tiering_manifest_errors_total", "Failed manifest stores.",
                    s.manifest_errors),
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
            ("streamd_tiering_upload_lag_offsets", "Offsets below the high watermark not yet "
             "archived.", "gauge", lag_offsets),
            ("streamd_tiering_upload_lag_bytes", "Local bytes not yet archived.", "gauge",
             lag_bytes),
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

