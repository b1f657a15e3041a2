"""The single-writer log of one partition.

Offsets (invariants, in order)::

    segments[0].base_offset <= log_start_offset <= high_watermark <= log_end_offset

- ``log_end_offset`` is the next offset to assign; offsets are dense across segments.
- ``high_watermark`` is what readers may see: with fsync "always" it advances only after the
  fsync that covers it (group commit), otherwise it equals ``log_end_offset``.
- ``log_start_offset`` only moves forward (DeleteRecords, retention) and is persisted in
  ``log-start-offset`` before any segment below it is deleted. Reads below it fail. Reads
  return whole batches, so a batch straddling the log start is returned whole (as Kafka does).

Appends are serialized by construction: validation, offset assignment, patching and index
updates run synchronously in one event-loop step. With fsync "never" or an interval the bytes
are written to the page cache in that same step. With fsync "always" the write is deferred:
one flush task at a time writes every pending batch and then fsyncs, both in the default
executor, so the event loop never waits on the disk (a write to a file being fsynced can block)
and concurrent appenders share one fsync. The high watermark covers only written and fsynced
bytes, so readers never see a deferred batch. A failed write or fsync fails the partition
(every later append raises StorageError); restart recovery truncates whatever was torn.
A rejected payload writes nothing.

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
from streamd.log.files import atomic_write, fsync_dir
from streamd.log.flusher import SharedFlusher
from streamd.log.fsync import FsyncPolicy
from streamd.log.producer_state import SNAPSHOT_FILE, ProducerStateTable
from streamd.log.recovery import recover_partition, write_clean_marker
from streamd.log.segment import FileSlice, Segment, SegmentFile
from streamd.log.syncfs import FilesystemSync
from streamd.log.topic_config import TopicConfig
from streamd.log.txn_index import AbortedTxn, TxnIndex, collect

log = logging.getLogger("streamd.log")

LOG_START_FILE = "log-start-offset"
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


class PartitionLog:
    def __init__(
        self,
        directory: Path,
        config: TopicConfig,
        fsync: FsyncPolicy,
        segments: list[Segment],
        log_start_offset: int,
    ) -> None:
        self.directory = directory
        self.config = config
        self.fsync_policy = fsync
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        self._log_start = log_start_offset
        self._durable_offset = self.log_end_offset
        self._unsynced: list[SegmentFile] = []
        self._pending: list[tuple[Segment, bytes | bytearray, int]] = []
        self._failed: StorageError | None = None
        self._dir_dirty = False
        self._sealed_this_session: list[Segment] = []
        self._flush_task: asyncio.Task[None] | None = None
        self.last_flush_ms = now_ms()
        self._closed = False
        self.flusher: SharedFlusher | None = None
        """Set by the log manager: one group commit across all its partitions."""
        self._page_cache_window = -1
        self._snapshot: bytes | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
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
    ) -> PartitionLog:
        """Open (creating if needed) and recover the partition stored in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        now = now_ms() if now is None else now
        segments = recover_partition(
            directory, index_interval_bytes=config.index_interval_bytes, now_ms=now
        )
        log_start = _read_log_start(directory)
        if not segments:
            segments = [
                Segment(
                    directory,
                    log_start or 0,
                    index_interval_bytes=config.index_interval_bytes,
                    created_ms=now,
                )
            ]
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
                segment.close()
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
        return cls(directory, config, fsync or FsyncPolicy("never"), segments, log_start)

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

    def update_config(self, config: TopicConfig) -> None:
        self.config = config
        self.active.index_interval_bytes = config.index_interval_bytes

    # ---- append --------------------------------------------------------------------------------

    async def append(self, payload: bytes | bytearray | memoryview, *, now_ms: int) -> AppendResult:
        """Validate, assign offsets to and store a produce payload (one or more v2 batches).

        Returns once the batches are in the log file, and with fsync "always" once they are
        fsynced too. Raises CorruptMessage / InvalidRecord / MessageTooLarge, appending nothing.
        """
        result = self.stage_append(payload, now_ms=now_ms)
        await self.wait_durable(result)
        return result

    def stage_append(self, payload: bytes | bytearray | memoryview, *, now_ms: int) -> AppendResult:
        """The synchronous part of :meth:`append`: offsets are assigned in call order, so a
        caller that stages several appends (pipelined requests) without awaiting in between
        keeps their order. Follow with :meth:`wait_durable` before acknowledging."""
        self._check_open()
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
                    duplicate.base_offset, duplicate.last_offset, -1, self._log_start
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
        self._check_open()
        marker = marker_batch(producer_id, producer_epoch, commit, coordinator_epoch, now_ms)
        buf = bytearray(marker)
        result = self._stage(buf, [parse_header(buf)], 1, now_ms)
        ended = self.producers.end_txn(producer_id, result.base_offset)
        if ended is not None and not commit:
            entry = AbortedTxn(producer_id, ended[0], result.base_offset, ended[1])
            self.active.txn_index.append(entry)
        await self.wait_durable(result)
        return result

    def _stage(
        self, buf: bytearray, headers: list[BatchHeader], count: int, now_ms: int
    ) -> AppendResult:
        self._maybe_roll(len(buf), count, now_ms)
        base = self.log_end_offset
        append_time = now_ms if self.config.log_append_time else None
        patched = patch_for_append(buf, headers, base, append_time)
        producers = self.producers
        for header in patched:
            producers.apply(header)
        segment = self.active
        if self.fsync_policy.always:
            segment.track_deferred(patched, now_ms)
            self._pending.append((segment, buf, segment.size))
        else:
            segment.append(buf, patched, now_ms)
        if self.fsync_policy.mode != "never" and (
            not self._unsynced or self._unsynced[-1] is not segment.file
        ):
            self._unsynced.append(segment.file)
        last = base + count - 1
        return AppendResult(base, last, -1 if append_time is None else append_time, self._log_start)

    async def wait_durable(self, result: AppendResult) -> None:
        """Wait until a staged append is as durable as the fsync policy requires."""
        if self.fsync_policy.always:
            await self._wait_durable(result.last_offset + 1)

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
        old = self.active
        old.seal()
        self._sealed_this_session.append(old)
        new = Segment(
            self.directory,
            self.log_end_offset,
            index_interval_bytes=self.config.index_interval_bytes,
            created_ms=now,
        )
        self._segments.append(new)
        self._bases.append(new.base_offset)
        self._dir_dirty = True
        self._save_producer_state_later()

    def _save_producer_state_later(self) -> None:
        """Snapshot the producer state at every roll, written off the loop, so that restart
        after a crash scans about one segment, not the whole log (open transactions).

        Written and renamed without fsync: a crash may leave the previous snapshot or an
        unreadable one (then the scan starts further back), never a wrong one."""
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
            self._roll(now)
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

    async def _wait_durable(self, target: int) -> None:
        while self._durable_offset < target:
            self._check_open()
            await asyncio.shield(self._flush_runner())

    def _flush_runner(self) -> asyncio.Future[None]:
        if self.flusher is not None:
            return self.flusher.flush(self)
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_once())
        return self._flush_task

    async def _flush_once(self) -> None:
        job = self.take_flush_job()
        error = None
        try:
            await asyncio.get_running_loop().run_in_executor(None, run_flush_jobs, [job])
        except OSError as exc:
            error = exc
        finally:
            self._flush_task = None
        self.finish_flush_job(job, error)

    def take_flush_job(self) -> FlushJob:
        """Everything written or deferred so far, handed to one flush (of this partition only)."""
        files, self._unsynced = self._unsynced, []
        pending, self._pending = self._pending, []
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        return FlushJob(
            self.log_end_offset,
            pending,
            files,
            self.directory if dir_dirty else None,
            self.page_cache_window,
        )

    def finish_flush_job(self, job: FlushJob, error: BaseException | None) -> None:
        if error is not None:
            self._failed = StorageError(f"write/fsync in {self.directory} failed: {error}")
            log.error("%s; the partition refuses writes until restart", self._failed)
            raise self._failed from error
        for segment, _, end in job.pending:
            segment.readable_size = max(segment.readable_size, end)
        self._durable_offset = max(self._durable_offset, job.target)
        self.last_flush_ms = now_ms()

    async def flush(self) -> None:
        """Fsync everything written so far (the interval policy's timer calls this)."""
        if self._flush_task is not None:
            await asyncio.shield(self._flush_task)
        if self._unsynced or self._dir_dirty or self._durable_offset < self.log_end_offset:
            await asyncio.shield(self._flush_runner())

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
        Stops at the first segment that is kept or vetoed by ``may_delete``."""
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
                self._set_log_start(new_start)
            self._remove(doomed)
        return doomed

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Drop every local segment and restart the log empty at ``offset`` (restore, tiering)."""
        self._check_open()
        self._set_log_start(offset)
        old = self._segments
        self._segments = [
            Segment(
                self.directory,
                offset,
                index_interval_bytes=self.config.index_interval_bytes,
                created_ms=now_ms(),
            )
        ]
        self._bases = [offset]
        for segment in old:
            segment.delete()
        self._unsynced.clear()
        self._pending.clear()
        self._durable_offset = offset
        self._dir_dirty = True
        self.producers.ongoing.clear()

    def _set_log_start(self, offset: int) -> None:
        atomic_write(self.directory / LOG_START_FILE, b"%d\n" % offset)
        self._log_start = offset

    def _remove(self, doomed: list[Segment]) -> None:
        if not doomed:
            return
        gone = {id(s) for s in doomed}
        self._segments = [s for s in self._segments if id(s) not in gone]
        self._bases = [s.base_offset for s in self._segments]
        files = {id(s.file) for s in doomed}
        self._unsynced = [f for f in self._unsynced if id(f) not in files]
        for segment in doomed:
            segment.delete()
        self._dir_dirty = True

    # ---- lifecycle -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"partition log {self.directory} is closed")
        if self._failed is not None:
            raise self._failed

    async def close(self) -> None:
        """Fsync all data and indexes, write the clean-shutdown marker, release descriptors."""
        if self._closed:
            return
        if self.fsync_policy.mode == "never":
            self._unsynced = [s.file for s in self._segments]
        await self.flush()
        if self._snapshot_task is not None:
            await self._snapshot_task
        touched = [*self._sealed_this_session, self.active]
        await asyncio.get_running_loop().run_in_executor(None, self._finish_close, touched)
        self._closed = True

    def _finish_close(self, touched: list[Segment]) -> None:
        self.producers.save(self.directory)
        for segment in touched:
            segment.txn_index.fsync()
            for path in (segment.index_path, segment.timeindex_path):
                if path.exists():
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        for segment in self._segments:
            segment.close()
        write_clean_marker(self.directory)

    def discard(self) -> None:
        """Release descriptors without syncing (the partition is being deleted)."""
        self._closed = True
        self._snapshot = None
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
        for segment in self._segments:
            segment.close()


@dataclass(slots=True)
class FlushJob:
    target: int
    pending: list[tuple[Segment, bytes | bytearray, int]]
    files: list[SegmentFile]
    directory: Path | None
    page_cache_window: int = -1


def run_flush_jobs(
    jobs: list[FlushJob], fs_sync: FilesystemSync | None = None
) -> list[BaseException | None]:
    """Write every job's deferred batches, then make them durable: in a worker thread, never
    on the loop. All writes go first so that the disk sees them before the first sync of the
    round. With ``fs_sync`` the files on its filesystem are synced by one ``syncfs`` (see
    :mod:`streamd.log.syncfs`), the others by fsync."""
    errors: list[BaseException | None] = []
    for job in jobs:
        try:
            for segment, data, _ in job.pending:
                fd = segment.file.fd
                if fd < 0:
                    continue
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            errors.append(None)
        except OSError as exc:
            errors.append(exc)
    if fs_sync is not None and fs_sync.available:
        _syncfs_round(jobs, errors, fs_sync)
    else:
        for i, job in enumerate(jobs):
            if errors[i] is None:
                try:
                    _fsync_all(job.files, job.directory, job.page_cache_window)
                except OSError as exc:
                    errors[i] = exc
    if len(jobs) == 1 and errors[0] is not None:
        raise errors[0]
    return errors


def _syncfs_round(
    jobs: list[FlushJob], errors: list[BaseException | None], fs_sync: FilesystemSync
) -> None:
    try:
        covered = fs_sync.covers
        for i, job in enumerate(jobs):
            if errors[i] is None:
                others = [f for f in job.files if f.fd >= 0 and not covered(f.dev)]
                directory = job.directory
                if directory is not None and covered(os.stat(directory).st_dev):
                    directory = None
                if others or directory is not None:
                    try:
                        _fsync_all(others, directory, job.page_cache_window)
                    except OSError as exc:
                        errors[i] = exc
        fs_sync.sync()
    except OSError as exc:
        for i in range(len(jobs)):
            if errors[i] is None:
                errors[i] = exc
        return
    for i, job in enumerate(jobs):
        if errors[i] is None and job.page_cache_window >= 0:
            for file in job.files:
                file.drop_synced(job.page_cache_window)


def _fsync_all(files: list[SegmentFile], directory: Path | None, keep: int) -> None:
    for file in files:
        if file.fd >= 0:
            os.fsync(file.fd)
            file.drop_synced(keep)
    if directory is not None:
        fsync_dir(directory)


def _replace_file(path: Path, data: bytes) -> None:
    """Write a temporary file and rename it over ``path`` (no fsync: see the caller)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_log_start(directory: Path) -> int | None:
    try:
        return int((directory / LOG_START_FILE).read_text().strip())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning(
            "%s: unreadable %s, using the first segment's base offset", directory, LOG_START_FILE
        )
        return None
