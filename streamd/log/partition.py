"""The single-writer log of one partition.

Offsets (invariants, in order)::

    segments[0].base_offset <= log_start_offset <= high_watermark <= log_end_offset

- ``log_end_offset`` is the next offset to assign; offsets are dense across segments.
- ``high_watermark`` is what readers may see: with fsync "always" it advances only after the
  fsync that covers it (group commit), otherwise it equals ``log_end_offset``.
- ``log_start_offset`` only moves forward (DeleteRecords, retention) and is persisted (see
  :mod:`streamd.log.start_offset`, written in place so that deleting never needs free space)
  before any segment below it is deleted. Reads below it fail. Reads return whole batches, so
  a batch straddling the log start is returned whole (as Kafka does).

Appends are serialized by construction: validation, offset assignment, patching and index
updates run synchronously in one event-loop step. With fsync "never" or an interval the bytes
are written to the page cache in that same step. With fsync "always" the write is deferred:
the shared flusher (:mod:`streamd.log.flusher`, the one group-commit path) writes every pending
batch and then fsyncs, in the default executor, so the event loop never waits on the disk and
concurrent appenders share one fsync. The high watermark covers only written and fsynced
bytes, so readers never see a deferred batch. A rejected payload writes nothing.

Invariant 11, nothing acknowledged that is not in the file: a waiter is released only by the
flush round that wrote and synced its batch, and only if nothing was dropped since it staged
(``_epoch``). When a round fails, its waiters and every later staged append fail; then:

- out of space (ENOSPC, EDQUOT; see :mod:`streamd.log.disk`): the partition *rewinds* at once
  to what is durable: the unacknowledged tail is cut from the file, segments rolled after it
  are removed and the producer state forgets those batches, so offsets stay dense and an
  idempotent producer's retry is accepted. Appends resume when the disk has room again.
- any other error: the partition refuses writes until restart (the page cache may have lost
  bytes), and restart recovery truncates whatever was torn.

Close: the partition refuses new appends first, then flushes what was staged (its waiters are
answered), is marked closed, and only then releases its descriptors.

Segments wholly below the log start are deleted by retention without asking ``may_delete``
(that data is gone for every reader, local or remote).

Transactions: ``last_stable_offset`` (LSO) = the first offset of the oldest transaction still
open on this partition, else the high watermark; never below the log start. read_committed
readers stop there. Transaction markers are appended by :meth:`append_marker` (the coordinator's
path, never a client's); an ABORT marker adds an entry to the aborted-transaction index of the
segment it lands in (:mod:`streamd.log.txn_index`), which read_committed fetches return.
A marker ends its transaction here when it is staged, before it is durable: the decision it
carries is already durable at the coordinator, which writes it again after a crash.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamd.errors import InvalidRecord, OffsetOutOfRange, StorageError, StreamdError
from streamd.log.batch import (
    CONTROL,
    BatchHeader,
    check_client_batches,
    iter_record_timestamps,
    parse_header,
    patch_for_append,
    validate_produce_batches,
)
from streamd.log.conform import check_timestamps, conform_batches
from streamd.log.control import ABORT, marker_batch, marker_type
from streamd.log.disk import DiskMonitor
from streamd.log.files import fsync_dir
from streamd.log.flusher import FlushJob, SharedFlusher
from streamd.log.fsync import FsyncPolicy
from streamd.log.producer_state import SNAPSHOT_FILE, ProducerStateTable
from streamd.log.recovery import recover_partition, write_clean_marker
from streamd.log.segment import FileSlice, Segment, SegmentFile
from streamd.log.start_offset import read_log_start, write_log_start
from streamd.log.topic_config import TopicConfig
from streamd.log.txn_index import AbortedTxn, TxnIndex, collect

log = logging.getLogger("streamd.log")

MAX_RELATIVE_OFFSET = 2**31 - 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class AppendResult:
    base_offset: int
    last_offset: int
    log_append_time_ms: int
    """-1 for CreateTime topics."""
    log_start_offset: int
    epoch: int = 0
    """The partition's epoch when the append was staged (see ``PartitionLog._epoch``)."""


class PartitionLog:
    def __init__(
        self,
        directory: Path,
        config: TopicConfig,
        fsync: FsyncPolicy,
        segments: list[Segment],
        log_start_offset: int,
        *,
        flusher: SharedFlusher | None = None,
        disk: DiskMonitor | None = None,
    ) -> None:
        self.directory = directory
        self.name = f"{directory.parent.name}-{directory.name}"
        """``<topic>-<partition>``: names the partition in errors without a server path."""
        self.config = config
        self.fsync_policy = fsync
        self.flusher = flusher or SharedFlusher()
        """One group commit across all the partitions of a log manager."""
        self.disk = disk or DiskMonitor(directory)
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        self._log_start = log_start_offset
        self._durable_offset = self.log_end_offset
        self._unsynced: list[SegmentFile] = []
        self._pending: list[tuple[Segment, bytes | bytearray, int]] = []
        self._failed: StorageError | None = None
        self._epoch = 0
        """Bumped whenever staged appends are dropped (a failed flush round, a full
        truncation): a waiter staged in an older epoch is never acknowledged."""
        self._dropped: StorageError | None = None
        self._job_running = False
        self._dir_dirty = False
        self._sealed_this_session: list[Segment] = []
        self.last_flush_ms = now_ms()
        self._closing = False
        self._closed = False
        self._page_cache_window = -1
        self._snapshot: bytes | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        self._snapshots_allowed = True
        self._ended_txns: list[tuple[int, int, int]] = []
        """(marker offset, producer id, first offset) of transactions ended by markers not yet
        durable: a rewind that drops such a marker opens its transaction again."""
        self.producers = self._load_producer_state()

    @property
    def page_cache_window(self) -> int:
        """Bytes of each segment's newest data left in the OS page cache (-1: the OS decides).

        Older pages are dropped after each fsync, and again after a fetch or an upload read
        them: a write-heavy or replaying broker keeps a bounded page cache footprint, as
        Redpanda does. Set by the log manager."""
        return self._page_cache_window

    @page_cache_window.setter
    def page_cache_window(self, window: int) -> None:
        self._page_cache_window = window
        if window >= 0:
            for segment in self._segments:
                segment.file.uncached_below = max(0, segment.size - window)

    def _load_producer_state(self) -> ProducerStateTable:
        """Snapshot plus a header scan of what was appended after it; with no usable snapshot
        (or a transaction index that does not load), a scan of every segment, since an open
        transaction may have begun anywhere. The scan also rebuilds the aborted-transaction
        index entries of the offsets it covers (markers whose type it reads)."""
        table = ProducerStateTable.load(self.directory)
        trusted = True
        for segment in self._segments:
            loaded = TxnIndex.load(segment.txn_index.path, segment.base_offset, segment.next_offset)
            if loaded is None:
                log.warning("%s is unreadable; rebuilding it", segment.txn_index.path)
                trusted = False
                loaded = TxnIndex(segment.txn_index.path)
            segment.txn_index = loaded
        first = self._segments[0].base_offset
        if not trusted or not first <= table.scanned_to <= self.log_end_offset:
            table = ProducerStateTable()
        start = max(table.scanned_to, first)
        for segment in self._segments:
            if segment.next_offset <= start:
                continue
            found = segment.find_position(max(start, segment.base_offset))
            if found is None:
                continue
            aborted = [e for e in segment.txn_index.entries if e.last_offset < start]
            for pos, header in segment.iter_headers(found[0]):
                if header.base_offset < start:
                    continue
                table.apply(header)
                if header.attributes & CONTROL and header.producer_id >= 0:
                    entry = self._replay_marker(table, segment, pos, header)
                    if entry is not None:
                        aborted.append(entry)
            segment.txn_index.replace(aborted)
        return table

    def _replay_marker(
        self, table: ProducerStateTable, segment: Segment, pos: int, header: BatchHeader
    ) -> AbortedTxn | None:
        try:
            kind = marker_type(segment.read_batch(pos, header))
        except StreamdError as exc:
            log.warning("%s: unreadable marker at %d: %s", segment.path, header.base_offset, exc)
            return None
        ended = table.end_txn(header.producer_id, header.base_offset)
        if ended is None or kind != ABORT:
            return None
        return AbortedTxn(header.producer_id, ended[0], header.base_offset, ended[1])

    @classmethod
    def open(
        cls,
        directory: Path,
        config: TopicConfig,
        *,
        fsync: FsyncPolicy | None = None,
        now: int | None = None,
        flusher: SharedFlusher | None = None,
        disk: DiskMonitor | None = None,
    ) -> PartitionLog:
        """Open (creating if needed) and recover the partition stored in ``directory``.

        Opening never needs free space for a partition that exists: only a new partition
        writes (its first segment file and its log start)."""
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        now = now_ms() if now is None else now
        segments = recover_partition(
            directory, index_interval_bytes=config.index_interval_bytes, now_ms=now
        )
        log_start = read_log_start(directory)
        if not segments:
            segments = [
                Segment(
                    directory,
                    log_start or 0,
                    index_interval_bytes=config.index_interval_bytes,
                    created_ms=now,
                )
            ]
            if created:
                write_log_start(directory, log_start or 0)
            fsync_dir(directory)
        end = segments[-1].next_offset
        if log_start is not None and log_start > end:
            log.warning(
                "%s: log start offset %d is past the recovered end %d; starting empty at %d",
                directory,
                log_start,
                end,
                log_start,
            )
            for segment in segments:
                segment.delete()
            segments = [
                Segment(
                    directory,
                    log_start,
                    index_interval_bytes=config.index_interval_bytes,
                    created_ms=now,
                )
            ]
            fsync_dir(directory)
        if log_start is None or log_start < segments[0].base_offset:
            log_start = segments[0].base_offset
        return cls(
            directory,
            config,
            fsync or FsyncPolicy("never"),
            segments,
            log_start,
            flusher=flusher,
            disk=disk,
        )

    # ---- state ---------------------------------------------------------------------------------

    @property
    def segments(self) -> list[Segment]:
        """Ordered segments; the last one is the active segment. Do not mutate."""
        return self._segments

    @property
    def active(self) -> Segment:
        return self._segments[-1]

    @property
    def log_start_offset(self) -> int:
        return self._log_start

    @property
    def log_end_offset(self) -> int:
        return self._segments[-1].next_offset

    @property
    def high_watermark(self) -> int:
        if self.fsync_policy.always:
            return self._durable_offset
        return self.log_end_offset

    @property
    def last_stable_offset(self) -> int:
        """read_committed readers see offsets below this (see the module docstring)."""
        hw = self.high_watermark
        first = self.producers.first_unstable_offset()
        if first is None or first >= hw:
            return hw
        return max(first, self._log_start)

    def aborted_transactions(self, fetch_offset: int, upper: int) -> list[AbortedTxn]:
        """Aborted transactions with data in ``[fetch_offset, upper)`` (read_committed Fetch)."""
        i = max(0, bisect.bisect_right(self._bases, fetch_offset) - 1)
        found, _ = collect((s.txn_index.entries for s in self._segments[i:]), fetch_offset, upper)
        return found

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def closed(self) -> bool:
        return self._closed

    def update_config(self, config: TopicConfig) -> None:
        self.config = config
        self.active.index_interval_bytes = config.index_interval_bytes

    # ---- append --------------------------------------------------------------------------------

    async def append(self, payload: bytes | bytearray | memoryview, *, now_ms: int) -> AppendResult:
        """Validate, assign offsets to and store a produce payload (one or more v2 batches).

        Returns once the batches are in the log file, and with fsync "always" once they are
        fsynced too. Raises CorruptMessage / InvalidRecord / MessageTooLarge, appending nothing,
        and StorageError when the batches cannot be stored (nothing of them is acknowledged).
        """
        result = self.stage_append(payload, now_ms=now_ms)
        await self.wait_durable(result)
        return result

    def stage_append(self, payload: bytes | bytearray | memoryview, *, now_ms: int) -> AppendResult:
        """The synchronous part of :meth:`append`: offsets are assigned in call order, so a
        caller that stages several appends (pipelined requests) without awaiting in between
        keeps their order. Follow with :meth:`wait_durable` before acknowledging."""
        self._check_writable()
        headers = validate_produce_batches(payload, self.config.max_message_bytes)
        check_client_batches(headers)
        check_timestamps(headers, self.config, now_ms)
        producers = self.producers
        for header in headers:
            duplicate = producers.check(header)
            if duplicate is not None:
                if len(headers) != 1:
                    raise InvalidRecord("a retried idempotent batch must be sent alone")
                return AppendResult(
                    duplicate.base_offset, duplicate.last_offset, -1, self._log_start, self._epoch
                )
        count = sum(h.last_offset_delta + 1 for h in headers)
        buf, headers = conform_batches(payload, headers, self.config)
        return self._stage(buf, headers, count, now_ms)

    async def append_marker(
        self,
        producer_id: int,
        producer_epoch: int,
        commit: bool,
        coordinator_epoch: int = 0,
        *,
        now_ms: int,
    ) -> AppendResult:
        """Append a COMMIT or ABORT marker ending the producer's transaction here; returns once
        it is as durable as the fsync policy requires. Only the transaction coordinator calls
        this (clients cannot write control batches)."""
        self._check_writable()
        marker = marker_batch(producer_id, producer_epoch, commit, coordinator_epoch, now_ms)
        buf = bytearray(marker)
        result = self._stage(buf, [parse_header(buf)], 1, now_ms)
        ended = self.producers.end_txn(producer_id, result.base_offset)
        if ended is not None:
            self._ended_txns.append((result.base_offset, producer_id, ended[0]))
            if not commit:
                entry = AbortedTxn(producer_id, ended[0], result.base_offset, ended[1])
                try:
                    self.active.txn_index.append(entry)
                except OSError as exc:
                    self._txn_index_lost(exc)
        await self.wait_durable(result)
        return result

    def _txn_index_lost(self, exc: OSError) -> None:
        """An aborted-transaction entry did not reach its file (a full disk): the entry is in
        memory; for the next start to rebuild it, the producer-state snapshot goes (unlinking
        needs no space) and none is written again this session, so that start scans the log
        from its beginning, as it does without a snapshot."""
        self.disk.note(exc)
        log.warning("%s: aborted-transaction index not written (%s); the next start rebuilds "
                    "it from the log", self.name, exc.strerror)
        self._snapshots_allowed = False
        self._snapshot = None
        (self.directory / SNAPSHOT_FILE).unlink(missing_ok=True)

    def _stage(
        self, buf: bytearray, headers: list[BatchHeader], count: int, now_ms: int
    ) -> AppendResult:
        self._maybe_roll(len(buf), count, now_ms)
        base = self.log_end_offset
        append_time = now_ms if self.config.log_append_time else None
        patched = patch_for_append(buf, headers, base, append_time)
        producers = self.producers
        segment = self.active
        if self.fsync_policy.always:
            for header in patched:
                producers.apply(header)
            segment.track_deferred(patched, now_ms)
            self._pending.append((segment, buf, segment.size))
        else:
            try:
                segment.append(buf, patched, now_ms)
            except StorageError as exc:
                self.disk.note(exc)
                raise
            for header in patched:
                producers.apply(header)
        if self.fsync_policy.mode != "never" and (
            not self._unsynced or self._unsynced[-1] is not segment.file
        ):
            self._unsynced.append(segment.file)
        last = base + count - 1
        return AppendResult(
            base, last, -1 if append_time is None else append_time, self._log_start, self._epoch
        )

    async def wait_durable(self, result: AppendResult) -> None:
        """Wait until a staged append is as durable as the fsync policy requires; raise
        StorageError if it never will be."""
        if self.fsync_policy.always:
            await self._wait_durable(result.last_offset + 1, result.epoch)

    def _maybe_roll(self, incoming_bytes: int, incoming_count: int, now: int) -> None:
        segment = self.active
        if segment.is_empty:
            return
        if (
            segment.size + incoming_bytes > self.config.segment_bytes
            or now - segment.created_ms >= self.config.segment_ms
            or self.log_end_offset + incoming_count - 1 - segment.base_offset > MAX_RELATIVE_OFFSET
        ):
            self._roll(now)

    def _roll(self, now: int) -> None:
        """Start a new active segment. Its file is created first: if that fails (a full disk)
        nothing has changed."""
        old = self.active
        try:
            new = Segment(
                self.directory,
                self.log_end_offset,
                index_interval_bytes=self.config.index_interval_bytes,
                created_ms=now,
            )
        except OSError as exc:
            error = StorageError(f"cannot start a new segment of {self.name}: {exc.strerror}")
            error.__cause__ = exc
            self.disk.note(exc)
            raise error from exc
        old.seal()
        self._sealed_this_session.append(old)
        self._segments.append(new)
        self._bases.append(new.base_offset)
        self._dir_dirty = True
        self._save_producer_state_later()

    def _save_producer_state_later(self) -> None:
        """Snapshot the producer state at every roll, written off the loop, so that restart
        after a crash scans about one segment, not the whole log (open transactions).

        Written and renamed without fsync: a crash may leave the previous snapshot or an
        unreadable one (then the scan starts further back), never a wrong one."""
        if not self._snapshots_allowed:
            return
        self._snapshot = self.producers.to_json()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_snapshot_now()
            return
        if self._snapshot_task is None or self._snapshot_task.done():
            self._snapshot_task = loop.create_task(self._write_snapshots())

    async def _write_snapshots(self) -> None:
        while self._snapshot is not None:
            data, self._snapshot = self._snapshot, None
            try:
                await asyncio.to_thread(_replace_file, self.directory / SNAPSHOT_FILE, data)
            except OSError as exc:
                log.warning("%s: producer state snapshot not written: %s", self.directory, exc)

    def _write_snapshot_now(self) -> None:
        data, self._snapshot = self._snapshot, None
        if data is not None:
            _replace_file(self.directory / SNAPSHOT_FILE, data)

    def roll_if_due(self, now: int) -> bool:
        """Roll a non-empty active segment older than ``segment.ms``."""
        segment = self.active
        if not segment.is_empty and now - segment.created_ms >= self.config.segment_ms:
            try:
                self._roll(now)
            except StorageError as exc:
                log.warning("%s", exc)
                return False
            return True
        return False

    def seal_active(self) -> Segment | None:
        """Seal the active segment now (if it holds data) and return it."""
        segment = self.active
        if segment.is_empty:
            return None
        self._roll(now_ms())
        return segment

    # ---- durability ----------------------------------------------------------------------------

    async def _wait_durable(self, target: int, epoch: int) -> None:
        while True:
            if epoch != self._epoch:
                raise self._dropped or StorageError(f"appends to {self.name} were dropped")
            if self._durable_offset >= target:
                return
            if self._closed:
                raise StorageError(f"partition {self.name} is closed")
            if self._failed is not None:
                raise self._failed
            await asyncio.shield(self.flusher.flush(self))

    def take_flush_job(self) -> FlushJob:
        """Everything written or deferred so far, handed to one flush round. Every file the
        job touches is pinned open until :meth:`finish_flush_job`. A failed partition hands
        out an empty job: nothing is written after a failure."""
        if self._failed is not None:
            return FlushJob(self._durable_offset, [], [], None, self.page_cache_window)
        files, self._unsynced = self._unsynced, []
        pending, self._pending = self._pending, []
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        job = FlushJob(
            self.log_end_offset,
            pending,
            files,
            self.directory if dir_dirty else None,
            self.page_cache_window,
        )
        touched = list(files)
        for segment, _, _ in pending:
            if segment.file not in touched:
                touched.append(segment.file)
        try:
            SegmentFile.pin_all(touched)
        except StorageError as exc:
            self._fail(job, exc)
            raise
        job.pinned = touched
        self._job_running = True
        return job

    def finish_flush_job(self, job: FlushJob, error: BaseException | None) -> None:
        """Apply a round's outcome: advance the high watermark, or fail (see the module
        docstring) and raise the error every waiter of the round receives."""
        self._job_running = False
        SegmentFile.unpin_all(job.pinned)
        job.pinned = []
        if error is not None:
            raise self._fail(job, error)
        for segment, _, end in job.pending:
            segment.readable_size = max(segment.readable_size, end)
        self._durable_offset = max(self._durable_offset, job.target)
        if self._ended_txns:
            durable = self._durable_offset
            self._ended_txns = [t for t in self._ended_txns if t[0] >= durable]
        self.last_flush_ms = now_ms()

    def _fail(self, job: FlushJob, error: BaseException) -> StorageError:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        failure = StorageError(f"write/fsync of {self.name} failed: {reason}")
        failure.__cause__ = error
        self._epoch += 1
        self._dropped = failure
        self._pending.clear()
        self._unsynced.clear()
        if self.disk.note(error) and self.fsync_policy.always and not self._closed:
            try:
                self._rewind()
            except (OSError, StorageError) as exc:
                log.error("%s: cannot drop the unacknowledged tail: %s", self.name, exc)
            else:
                log.warning(
                    "%s: %s; dropped the unacknowledged tail, the log ends at %d again",
                    self.name, reason, self.log_end_offset,
                )
                return failure
        self._failed = failure
        log.error("%s; the partition refuses writes until restart", failure)
        return failure

    def _rewind(self) -> None:
        """Cut everything after the durable offset: the tail of the segment holding it, the
        segments rolled after it, and the producer state of the dropped batches."""
        durable = self._durable_offset
        keep = max(0, bisect.bisect_right(self._bases, durable) - 1)
        doomed = self._segments[keep + 1 :]
        tail = self._segments[keep]
        tail.truncate_to(tail.readable_size)
        if tail.next_offset != durable:
            raise StorageError(
                f"{self.name}: the durable part ends at offset {tail.next_offset}, "
                f"expected {durable}"
            )
        for segment in doomed:
            segment.delete()
        self._segments = self._segments[: keep + 1]
        self._bases = self._bases[: keep + 1]
        gone = {id(s) for s in doomed}
        self._sealed_this_session = [s for s in self._sealed_this_session if id(s) not in gone]
        self.producers.truncate_to(durable)
        for marker, producer_id, first in reversed(self._ended_txns):
            if marker >= durable and first < durable:  # its marker is gone: open again
                self.producers.ongoing[producer_id] = first
        self._ended_txns.clear()
        aborts = tail.txn_index.entries
        tail.txn_index.truncate(bisect.bisect_left([e.last_offset for e in aborts], durable))
        self._dir_dirty = self._dir_dirty or bool(doomed)

    async def flush(self) -> None:
        """Fsync everything written so far (the interval policy's timer calls this), after
        any flush round of this partition that is still running."""
        if (
            self._unsynced
            or self._dir_dirty
            or self._pending
            or self._job_running
            or (self._durable_offset < self.log_end_offset and self._failed is None)
        ):
            await asyncio.shield(self.flusher.flush(self))

    # ---- read ----------------------------------------------------------------------------------

    def read(
        self, offset: int, max_bytes: int, *, min_one: bool = True, upto: int | None = None
    ) -> FileSlice | None:
        """Whole batches starting with the one holding ``offset``, from one segment, below the
        high watermark (and ``upto``). None when there is nothing to return yet."""
        if offset < self._log_start or offset > self.log_end_offset:
            raise OffsetOutOfRange(
                f"offset {offset} is outside [{self._log_start}, {self.log_end_offset}] "
                f"of {self.directory.name}"
            )
        limit = self.high_watermark if upto is None else min(upto, self.high_watermark)
        if offset >= limit:
            return None
        segment = self._segment_for(offset)
        found = segment.find_position(offset)
        if found is None:
            return None
        return segment.read(found[0], max_bytes, min_one, end_offset=limit)

    def _segment_for(self, offset: int) -> Segment:
        return self._segments[max(0, bisect.bisect_right(self._bases, offset) - 1)]

    def offset_for_timestamp(self, ts_ms: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the earliest visible record with timestamp >= ``ts_ms``."""
        end = self.high_watermark
        for segment in self._segments:
            if segment.next_offset <= self._log_start or segment.max_timestamp < ts_ms:
                continue
            if segment.base_offset >= end:
                break
            found = segment.offset_for_timestamp(ts_ms, self._log_start, end)
            if found is not None:
                return found
        return None

    def max_timestamp_offset(self) -> tuple[int, int] | None:
        """(offset, timestamp) of the earliest visible record carrying the largest timestamp
        (ListOffsets -3, KIP-734); None for an empty log. Like Kafka 3.9 it looks at the local
        segments only. Cold path: segments are visited by descending ``max_timestamp`` and the
        scan stops once no other segment can hold a larger one; one batch is decoded."""
        start, end = self._log_start, self.high_watermark
        candidates = sorted(
            (
                s
                for s in self._segments
                if s.next_offset > start and s.base_offset < end and s.max_timestamp >= 0
            ),
            key=lambda s: (-s.max_timestamp, s.base_offset),
        )
        best: tuple[BatchHeader, Segment, int] | None = None
        for segment in candidates:
            if best is not None and segment.max_timestamp < best[0].max_timestamp:
                break
            for pos, header in segment.iter_headers():
                if header.base_offset >= end:
                    break
                if header.last_offset < start:
                    continue
                if best is None or (header.max_timestamp, -header.base_offset) > (
                    best[0].max_timestamp,
                    -best[0].base_offset,
                ):
                    best = (header, segment, pos)
        if best is None or best[0].max_timestamp < 0:
            return None
        header, segment, pos = best
        ts = header.max_timestamp
        for offset, record_ts in iter_record_timestamps(segment.read_batch(pos, header)):
            if record_ts == ts:
                return max(offset, start), ts
        return header.base_offset, ts

    # ---- deletion ------------------------------------------------------------------------------

    def delete_records_before(self, offset: int) -> int:
        """Move the log start to ``offset`` (-1: the high watermark); return the new start."""
        hw = self.high_watermark
        if offset == -1:
            offset = hw
        if offset < 0 or offset > hw:
            raise OffsetOutOfRange(f"cannot delete records before {offset}: high watermark {hw}")
        if offset > self._log_start:
            self._set_log_start(offset)
            if not self.active.is_empty and self.active.next_offset <= offset:
                self._roll(now_ms())
            doomed = []
            for segment in self._segments[:-1]:
                if segment.next_offset > offset:
                    break
                doomed.append(segment)
            self._remove(doomed)
        return self._log_start

    def apply_retention(
        self,
        now: int,
        *,
        retention_ms: int,
        retention_bytes: int,
        may_delete: Callable[[Segment], bool] = lambda s: True,
    ) -> list[Segment]:
        """Delete the oldest sealed segments that are below the log start, older than
        ``retention_ms`` (by max timestamp) or beyond ``retention_bytes``; -1 disables a limit.
        Stops at the first segment that is kept or vetoed by ``may_delete``. At least
        ``retention_bytes`` stay: a segment goes only if what remains without it is still
        that large."""
        total = self.size_bytes
        doomed: list[Segment] = []
        for segment in self._segments[:-1]:
            below_start = segment.next_offset <= self._log_start
            expired = retention_ms >= 0 and now - segment.max_timestamp > retention_ms
            oversize = retention_bytes >= 0 and total - segment.size >= retention_bytes
            if not (below_start or expired or oversize):
                break
            if not below_start and not may_delete(segment):
                break
            doomed.append(segment)
            total -= segment.size
        if doomed:
            new_start = max(self._log_start, doomed[-1].next_offset)
            if new_start != self._log_start:
                # The new start is the first remaining segment's base, which recovery derives
                # by itself: when the write fails (a full disk), deleting goes ahead anyway.
                self._set_log_start(new_start, derivable=True)
            self._remove(doomed)
        return doomed

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Drop every local segment and restart the log empty at ``offset`` (restore, tiering).
        Appends still waiting for a flush are dropped (their waiters fail)."""
        self._check_writable()
        self._set_log_start(offset)
        old = self._segments
        for segment in old:
            segment.delete()
        self._segments = [
            Segment(
                self.directory,
                offset,
                index_interval_bytes=self.config.index_interval_bytes,
                created_ms=now_ms(),
            )
        ]
        self._bases = [offset]
        self._unsynced.clear()
        self._pending.clear()
        self._sealed_this_session.clear()
        self._epoch += 1
        self._dropped = StorageError(f"{self.name} was truncated fully")
        self.producers.truncate_to(offset)
        self._durable_offset = offset
        self._dir_dirty = True
        self.producers.ongoing.clear()
        self._ended_txns.clear()

    def _set_log_start(self, offset: int, *, derivable: bool = False) -> None:
        try:
            write_log_start(self.directory, offset)
        except OSError as exc:
            if not derivable:
                self.disk.note(exc)
                raise StorageError(
                    f"cannot persist the log start of {self.name}: {exc.strerror}"
                ) from exc
            log.warning("%s: cannot persist log start %d (%s); deleting anyway: recovery "
                        "derives it from the first segment", self.name, offset, exc.strerror)
        self._log_start = offset

    def _remove(self, doomed: list[Segment]) -> None:
        if not doomed:
            return
        gone = {id(s) for s in doomed}
        self._segments = [s for s in self._segments if id(s) not in gone]
        self._bases = [s.base_offset for s in self._segments]
        files = {id(s.file) for s in doomed}
        self._unsynced = [f for f in self._unsynced if id(f) not in files]
        self._pending = [p for p in self._pending if id(p[0]) not in gone]
        self._sealed_this_session = [s for s in self._sealed_this_session if id(s) not in gone]
        for segment in doomed:
            segment.delete()
        self._dir_dirty = True

    # ---- lifecycle -----------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closing or self._closed:
            raise StorageError(f"partition {self.name} is closed")
        if self._failed is not None:
            raise self._failed
        if self.disk.full and not self.disk.writable():
            raise StorageError(f"cannot append to {self.name}: the disk is full")

    async def close(self) -> None:
        """Refuse new appends, flush what was staged (its waiters are answered), mark the
        partition closed, then fsync indexes, write the clean-shutdown marker and release the
        descriptors. A full disk does not stop a close: without the marker (or the producer
        snapshot) the next start validates and scans a little more."""
        if self._closing or self._closed:
            return
        self._closing = True
        if self._snapshot_task is not None:
            await self._snapshot_task
        touched = [*self._sealed_this_session, self.active]
        if self.fsync_policy.mode == "never":  # what this session wrote; older files were synced
            self._unsynced = [s.file for s in touched if s in self._segments]
        try:
            await self.flush()
        except StorageError as exc:
            log.warning("%s: final flush failed: %s", self.name, exc)
        self._closed = True
        clean = self._failed is None
        await asyncio.get_running_loop().run_in_executor(None, self._finish_close, touched, clean)

    def _finish_close(self, touched: list[Segment], clean: bool) -> None:
        try:
            if self._snapshots_allowed:
                self.producers.save(self.directory)
        except OSError as exc:
            log.warning("%s: cannot save the producer state: %s", self.name, exc.strerror)
        try:
            for segment in touched:
                segment.txn_index.fsync()
                segment.fsync_indexes()
        except OSError as exc:
            clean = False
            log.warning("%s: cannot sync indexes: %s", self.name, exc.strerror)
        for segment in self._segments:
            segment.close()
        if clean:
            try:
                write_clean_marker(self.directory)
            except OSError as exc:
                log.warning("%s: cannot write the clean-shutdown marker (%s): the next start "
                            "validates every segment", self.name, exc.strerror)

    def discard(self) -> None:
        """Release descriptors without syncing (the partition is being deleted)."""
        self._closing = self._closed = True
        self._epoch += 1
        self._dropped = StorageError(f"partition {self.name} was deleted")
        self._pending.clear()
        self._snapshot = None
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
        for segment in self._segments:
            segment.close()


def _replace_file(path: Path, data: bytes) -> None:
    """Write a temporary file and rename it over ``path`` (no fsync: see the caller)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
