"""The log cleaner, broker side: picks the partition to clean, runs the pass in the cleaner
process, and swaps the cleaned segments into the live partition.

One pass at a time (Kafka's ``log.cleaner.threads=1``). Every ``backoff_ms`` the cleaner looks
at every compacted partition (segment metadata only, no I/O) and cleans the one that is due
(:mod:`streamd.log.compaction.plan`); after a pass it looks again at once. The pass itself runs
in :mod:`streamd.log.compaction.worker`'s process; this side only plans it (on the event loop,
from in-memory state), and for each cleaned group reported commits the swap
(:mod:`streamd.log.compaction.swap`): the fsyncs in a worker thread, the renames and the
segment-list change in one event-loop step, and only if the group's segments are still the
partition's (retention or a deletion may have removed them meanwhile; the group is then
abandoned).

A partition whose pass fails (a corrupt batch, an I/O error) is left alone for
``FAILED_BACKOFF_MS`` and reports the error in :meth:`LogCleaner.status`.

Broker settings: ``log.cleaner.enable``, ``log.cleaner.dedupe_buffer_bytes`` (the key map's
memory bound), ``log.cleaner.io_max_bytes_per_second`` (reads plus writes; 0 = no limit) and
``log.cleaner.backoff_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import streamd
from streamd.errors import StorageError
from streamd.log.compaction import swap
from streamd.log.compaction.plan import Cleanable, CompactionPolicy, SegmentInfo, cleanable
from streamd.log.compaction.swap import Checkpoint, CleanedSegment
from streamd.log.compaction.worker import PassRequest
from streamd.log.manager import LogManager
from streamd.log.partition import PartitionLog, now_ms
from streamd.log.segment import Segment, SegmentFile
from streamd.log.topic_config import TopicConfig

log = logging.getLogger("streamd.log.cleaner")

FAILED_BACKOFF_MS = 60_000
FILE_CLOSE_DELAY_MS = 60_000
"""Like Kafka's ``file.delete.delay.ms`` default: how long a replaced segment file stays open."""


@dataclass(frozen=True, slots=True)
class CleanerSettings:
    enabled: bool = True
    map_bytes: int = 128 * 1024 * 1024
    io_bytes_per_second: int = 20 * 1024 * 1024
    """Decision: Kafka's default is no limit. Unthrottled, a pass reading the log from disk
    multiplied the live produce -> consume p99 by 3 to 14 in ``bench/compaction.py``; at 20 to
    30 MiB/s it stayed within 2x (see the report in issue 17). 0 turns the limit off."""
    backoff_ms: int = 15_000
    crash_at: str = ""
    """Test hook: "commit" or "install" makes the broker exit right after that step of its
    first swap, as a kill -9 there would (``log.cleaner.debug.crash_at``)."""


def policy_of(config: TopicConfig) -> CompactionPolicy:
    return CompactionPolicy(
        min_cleanable_dirty_ratio=config.min_cleanable_dirty_ratio,
        min_compaction_lag_ms=config.min_compaction_lag_ms,
        max_compaction_lag_ms=config.max_compaction_lag_ms,
        delete_retention_ms=config.delete_retention_ms,
        segment_bytes=config.segment_bytes,
    )


@dataclass
class PassReport:
    """The outcome of one pass, as ``streamd topic describe`` and the metrics show it."""

    started_ms: int
    finished_ms: int = 0
    first_dirty: int = 0
    end_offset: int = 0
    groups: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    records_read: int = 0
    records_written: int = 0
    map_bytes_read: int = 0
    map_entries: int = 0
    map_capacity: int = 0
    abandoned_groups: int = 0
    error: str | None = None

    @property
    def duration_ms(self) -> int:
        return max(0, self.finished_ms - self.started_ms)


@dataclass
class PartitionState:
    checkpoint: Checkpoint | None
    last: PassReport | None = None
    failed_until_ms: int = 0


@dataclass
class CleanerTotals:
    passes: int = 0
    failed_passes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    map_bytes_read: int = 0
    pass_seconds: float = 0.0
    last_map_fill: float = 0.0


class WorkerDied(Exception):
    pass


class CleanerProcess:
    """The child process that runs passes (``python -m streamd.log.compaction.worker``)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None

    async def _ensure(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        root = str(Path(streamd.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streamd.log.compaction.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=1 << 20,
        )
        return self._proc

    async def run(self, request: PassRequest) -> AsyncIterator[dict[str, Any]]:
        proc = await self._ensure()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(asdict(request)).encode() + b"\n")
        await proc.stdin.drain()
        while True:
            line = await proc.stdout.readline()
            if not line:
                await self.stop()
                raise WorkerDied("the cleaner process exited during a pass")
            message = json.loads(line)
            yield message
            if message["kind"] in ("done", "error"):
                return

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


class LogCleaner:
    def __init__(self, logs: LogManager, settings: CleanerSettings | None = None) -> None:
        self.logs = logs
        self.settings = settings or CleanerSettings()
        self.process = CleanerProcess()
        self.totals = CleanerTotals()
        self._states: weakref.WeakKeyDictionary[PartitionLog, PartitionState] = (
            weakref.WeakKeyDictionary()
        )
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._graveyard: list[tuple[int, SegmentFile]] = []
        self.cleaning: PartitionLog | None = None
        """The partition whose pass is running."""

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self._task

    async def stop(self) -> None:
        """Stop between two steps of a pass: what was swapped stays, the rest is discarded
        (its ``.cleaned`` files are removed by recovery)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.process.stop()
        await self._close_buried(everything=True)

    def reconfigure(self, **changes: int) -> None:
        """New key-map bound, I/O limit or backoff (dynamic broker configs): from the next
        pass on (the backoff at once)."""
        self.settings = replace(self.settings, **changes)  # type: ignore[arg-type]
        self.wake()

    def wake(self) -> None:
        """Look for work now instead of after the backoff (tests, config changes)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            worked = False
            try:
                worked = await self.clean_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("log cleaner round failed; will retry")
            await self._close_buried()
            if not worked:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.backoff_ms / 1000)

    # ---- choosing ------------------------------------------------------------------------------

    def _state(self, plog: PartitionLog) -> PartitionState:
        state = self._states.get(plog)
        if state is None:
            state = PartitionState(swap.read_checkpoint(plog.directory))
            self._states[plog] = state
        return state

    def cleaned_offset(self, plog: PartitionLog) -> int:
        """Offsets below it have been through the cleaner (its checkpoint; 0: none yet)."""
        checkpoint = self._state(plog).checkpoint
        return 0 if checkpoint is None else checkpoint.first_dirty

    def settled(self, plog: PartitionLog, segment: Segment) -> bool:
        """``segment`` holds no tombstone or marker still waiting for its delete horizon (see
        :class:`streamd.log.compaction.swap.Checkpoint`)."""
        checkpoint = self._state(plog).checkpoint
        return checkpoint is None or segment.base_offset not in checkpoint.horizons

    def _compacted(self) -> Iterator[tuple[str, int, PartitionLog]]:
        for name, topic in self.logs.topics().items():
            if topic.config.compact:
                for index, plog in enumerate(topic.partitions):
                    yield name, index, plog

    def assess(self, plog: PartitionLog, now: int) -> Cleanable:
        """The partition's dirty section right now (metadata only)."""
        state = self._state(plog)
        segments = plog.segments
        infos = [
            SegmentInfo(
                s.base_offset,
                segments[i + 1].base_offset if i + 1 < len(segments) else s.next_offset,
                s.size,
                s.first_timestamp,
                s.max_timestamp,
                s.readable_size >= s.size,
            )
            for i, s in enumerate(segments)
        ]
        checkpoint = state.checkpoint.first_dirty if state.checkpoint else None
        return cleanable(
            infos,
            log_start=plog.log_start_offset,
            checkpoint=checkpoint,
            stable_offset=plog.last_stable_offset,
            policy=policy_of(plog.config),
            now_ms=now,
        )

    def choose(self, now: int) -> tuple[PartitionLog, Cleanable] | None:
        """The partition to clean next: the dirtiest due one (max.compaction.lag first), else
        the one whose pending delete horizon passed longest ago (see :mod:`.plan`)."""
        due: list[tuple[tuple[bool, float], PartitionLog, Cleanable]] = []
        horizons: list[tuple[int, PartitionLog, Cleanable]] = []
        for _, _, plog in self._compacted():
            state = self._state(plog)
            if state.failed_until_ms > now or plog.closed:
                continue
            found = self.assess(plog, now)
            policy = policy_of(plog.config)
            if found.due(policy):
                urgent = found.compaction_delay_ms > 0 and found.dirty_bytes > 0
                due.append(((urgent, found.dirty_ratio), plog, found))
                continue
            horizon = state.checkpoint.next_horizon if state.checkpoint else None
            if horizon is not None and horizon <= now and found.clean_bytes > 0:
                horizons.append((horizon, plog, found))
        if due:
            _, plog, found = max(due, key=lambda item: item[0])
            return plog, found
        if horizons:
            _, plog, found = min(horizons, key=lambda item: item[0])
            return plog, found
        return None

    async def clean_once(self, now: int | None = None) -> bool:
        """Clean the partition that is most due, if any; True when a pass ran."""
        if not self.settings.enabled:
            return False
        now = now_ms() if now is None else now
        chosen = self.choose(now)
        if chosen is None:
            return False
        plog, found = chosen
        self.cleaning = plog
        try:
            await self.clean(plog, found, now)
        finally:
            self.cleaning = None
        return True

    # ---- one pass ------------------------------------------------------------------------------

    def _request(
        self, plog: PartitionLog, found: Cleanable, now: int
    ) -> tuple[PassRequest, dict[int, Segment]]:
        segments = plog.segments
        run: dict[int, Segment] = {}
        rows = []
        for i, segment in enumerate(segments[:-1]):
            if segment.base_offset >= found.first_uncleanable:
                break
            run[segment.base_offset] = segment
            rows.append((segment.base_offset, segments[i + 1].base_offset, segment.readable_size))
        position = 0
        for segment in run.values():
            if segment.base_offset <= found.first_dirty < segment.next_offset:
                hit = segment.find_position(found.first_dirty)
                position = hit[0] if hit is not None else segment.readable_size
        config = plog.config
        producers = [
            (pid, entry.batches[-1].last_offset if entry.batches else None, entry.epoch)
            for pid, entry in plog.producers.producers.items()
        ]
        aborted = [
            (e.producer_id, e.first_offset, e.last_offset, e.last_stable_offset)
            for s in segments
            for e in s.txn_index.entries
        ]
        request = PassRequest(
            directory=str(plog.directory),
            segments=rows,
            first_dirty=found.first_dirty,
            first_uncleanable=found.first_uncleanable,
            dirty_position=position,
            now_ms=now,
            delete_retention_ms=config.delete_retention_ms,
            segment_bytes=config.segment_bytes,
            index_interval_bytes=config.index_interval_bytes,
            map_bytes=self.settings.map_bytes,
            io_bytes_per_second=self.settings.io_bytes_per_second,
            producers=producers,
            aborted=aborted,
        )
        return request, run

    async def clean(self, plog: PartitionLog, found: Cleanable, now: int) -> PassReport:
        """Run one pass over ``plog`` (see the module docstring)."""
        state = self._state(plog)
        report = PassReport(started_ms=now_ms(), first_dirty=found.first_dirty)
        request, run = self._request(plog, found, now)
        directory = plog.directory
        horizon = plog.config.delete_retention_ms + now
        horizons = dict(state.checkpoint.horizons) if state.checkpoint else {}
        checkpointed = False
        try:
            async for message in self.process.run(request):
                kind = message["kind"]
                if kind == "mapped":
                    report.end_offset = message["end_offset"]
                    report.map_entries = message["entries"]
                    report.map_capacity = message["capacity"]
                    report.map_bytes_read = message["bytes"]
                    pending = state.checkpoint.next_horizon if state.checkpoint else None
                    early = horizon if pending is None else min(pending, horizon)
                    checkpoint = Checkpoint(report.end_offset, early, dict(horizons))
                    await asyncio.to_thread(swap.write_checkpoint, directory, checkpoint)
                    state.checkpoint = checkpoint
                    checkpointed = True
                elif kind == "group":
                    stats = message["stats"]
                    if await self._swap(plog, run, message):
                        report.groups += 1
                        for base in message["replaces"]:
                            horizons.pop(base, None)
                        if stats["next_horizon"] is not None:
                            horizons[message["base"]] = stats["next_horizon"]
                    else:
                        report.abandoned_groups += 1
                    report.bytes_read += stats["bytes_read"]
                    report.bytes_written += stats["bytes_written"]
                    report.records_read += stats["records_read"]
                    report.records_written += stats["records_written"]
                elif kind == "done":
                    bases = {s.base_offset for s in plog.segments}
                    horizons = {b: h for b, h in horizons.items() if b in bases}
                    final = Checkpoint(
                        message["end_offset"], min(horizons.values(), default=None), horizons
                    )
                    if checkpointed and not plog.closed:
                        await asyncio.to_thread(swap.write_checkpoint, directory, final)
                    state.checkpoint = final
                elif kind == "error":
                    report.error = message["message"]
        except (OSError, WorkerDied) as exc:
            report.error = f"{type(exc).__name__}: {exc}"
        report.finished_ms = now_ms()
        state.last = report
        self._account(report)
        if report.error is not None:
            state.failed_until_ms = report.finished_ms + FAILED_BACKOFF_MS
            log.error(
                "cleaning %s failed: %s; retrying in %d s",
                plog.directory,
                report.error,
                FAILED_BACKOFF_MS // 1000,
            )
        else:
            log.info(
                "cleaned %s [%d, %d): %d groups, %.1f MB -> %.1f MB, %d -> %d records in %.2f s "
                "(key map %d/%d)",
                plog.directory,
                report.first_dirty,
                report.end_offset,
                report.groups,
                report.bytes_read / 1e6,
                report.bytes_written / 1e6,
                report.records_read,
                report.records_written,
                report.duration_ms / 1000,
                report.map_entries,
                report.map_capacity,
            )
        return report

    async def _swap(
        self, plog: PartitionLog, run: dict[int, Segment], message: dict[str, Any]
    ) -> bool:
        directory = plog.directory
        base, end = message["base"], message["end"]
        old = [run[b] for b in message["replaces"]]
        meta = CleanedSegment(
            base,
            end,
            message["size"],
            message["first_timestamp"],
            message["max_timestamp"],
            message["last_batch_base"],
        )
        if not plog.holds_run(old):
            await asyncio.to_thread(_abandon, directory, base, end)
            return False
        try:
            indexes = await asyncio.to_thread(_commit, directory, meta)
        except OSError as exc:
            log.warning("%s: cannot commit cleaned segment %d: %s", directory, base, exc)
            await asyncio.to_thread(_abandon, directory, base, end)
            return False
        if not plog.holds_run(old):
            await asyncio.to_thread(_abandon, directory, base, end)
            return False
        self._crash_point("commit")
        # Each old file is held open before its name changes: a descriptor opened afterwards
        # (they are opened lazily) would be the cleaned file's.
        held = self._hold(old)
        if held is None:
            await asyncio.to_thread(_abandon, directory, base, end)
            return False
        try:
            swap.install(directory, base, end, [s.base_offset for s in old[1:]])
        except BaseException:
            SegmentFile.unpin_all(held)
            raise
        self._crash_point("install")
        segment = swap.open_cleaned_segment(
            directory,
            meta,
            indexes,
            index_interval_bytes=plog.config.index_interval_bytes,
            created_ms=old[0].created_ms,
        )
        plog.replace_segments(old, segment)
        self._bury(held)
        await asyncio.to_thread(swap.finish, directory, [s.base_offset for s in old[1:]])
        return True

    @staticmethod
    def _hold(old: list[Segment]) -> list[SegmentFile] | None:
        """Pin the replaced segments' files, all or none under the descriptor cache's one lock
        (as a flush round pins its files); None if one is closed already: the segment went
        meanwhile."""
        held = [segment.file for segment in old]
        try:
            SegmentFile.pin_all(held)
        except StorageError:
            return None
        return held

    def _bury(self, held: list[SegmentFile]) -> None:
        """Retire the replaced segments' files now as deleted files (never opened again; a
        fetch slice still reading one keeps it open) and keep the pinned descriptors for
        ``FILE_CLOSE_DELAY_MS`` more, then unpin them in a thread: closing the last descriptor
        of a deleted file frees its blocks, which takes time."""
        due = now_ms() + FILE_CLOSE_DELAY_MS
        for file in held:
            file.unlinked()
        self._graveyard.extend((due, file) for file in held)

    async def _close_buried(self, everything: bool = False) -> None:
        now = now_ms()
        due = [f for t, f in self._graveyard if everything or t <= now]
        if due:
            self._graveyard = [(t, f) for t, f in self._graveyard if not everything and t > now]
            await asyncio.to_thread(_close_all, due)

    def _crash_point(self, step: str) -> None:
        if self.settings.crash_at == step:
            log.warning("log.cleaner.debug.crash_at=%s: exiting now", step)
            os._exit(99)

    def _account(self, report: PassReport) -> None:
        totals = self.totals
        totals.passes += 1
        if report.error is not None:
            totals.failed_passes += 1
        totals.bytes_read += report.bytes_read
        totals.bytes_written += report.bytes_written
        totals.map_bytes_read += report.map_bytes_read
        totals.pass_seconds += report.duration_ms / 1000
        if report.map_capacity:
            totals.last_map_fill = report.map_entries / report.map_capacity

    # ---- observability -------------------------------------------------------------------------

    def metric_families(self) -> list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]:
        """Prometheus families: bytes cleaned, pass time, key-map fill, dirtiest ratio."""
        t = self.totals
        now = now_ms()
        ratios = [
            ({"topic": name, "partition": str(index)}, self.assess(plog, now).dirty_ratio)
            for name, index, plog in self._compacted()
            if not plog.closed
        ]
        return [
            (
                "streamd_log_cleaner_passes_total",
                "Cleaning passes run.",
                "counter",
                [({}, t.passes)],
            ),
            (
                "streamd_log_cleaner_failed_passes_total",
                "Cleaning passes that failed.",
                "counter",
                [({}, t.failed_passes)],
            ),
            (
                "streamd_log_cleaner_read_bytes_total",
                "Log bytes the cleaner read and rewrote (the dirty log cleaned).",
                "counter",
                [({}, t.bytes_read)],
            ),
            (
                "streamd_log_cleaner_written_bytes_total",
                "Cleaned log bytes written.",
                "counter",
                [({}, t.bytes_written)],
            ),
            (
                "streamd_log_cleaner_pass_seconds_total",
                "Time spent in cleaning passes.",
                "counter",
                [({}, t.pass_seconds)],
            ),
            (
                "streamd_log_cleaner_key_map_fill_ratio",
                "Share of the key map the last pass used (log.cleaner.dedupe_buffer_bytes).",
                "gauge",
                [({}, t.last_map_fill)],
            ),
            (
                "streamd_log_cleaner_dirty_ratio",
                "Dirty share of each compacted partition.",
                "gauge",
                ratios,
            ),
        ]

    def status(self, topic: str) -> list[dict[str, Any]] | None:
        """Per partition of a compacted topic: the dirty section now and the last pass."""
        found = self.logs.get(topic)
        if found is None:
            return None
        now = now_ms()
        rows = []
        for index, plog in enumerate(found.partitions):
            state = self._state(plog)
            section = self.assess(plog, now)
            last = state.last
            rows.append(
                {
                    "partition": index,
                    "compacted": found.config.compact,
                    "cleaning_now": self.cleaning is plog,
                    "dirty_ratio": round(section.dirty_ratio, 4),
                    "clean_bytes": section.clean_bytes,
                    "dirty_bytes": section.dirty_bytes,
                    "first_dirty_offset": section.first_dirty,
                    "first_uncleanable_offset": section.first_uncleanable,
                    "next_delete_horizon_ms": state.checkpoint.next_horizon
                    if state.checkpoint
                    else None,
                    "last_cleaning": None
                    if last is None
                    else {
                        **asdict(last),
                        "duration_ms": last.duration_ms,
                    },
                }
            )
        return rows


def _commit(directory: Path, meta: CleanedSegment) -> tuple[Any, Any, Any]:
    """Steps 1-2 of a swap, off the event loop; returns the cleaned indexes."""
    indexes = swap.load_indexes(directory, meta.base_offset, meta.size, meta.end_offset)
    swap.commit(directory, meta.base_offset, meta.end_offset)
    return indexes


def _close_all(files: list[SegmentFile]) -> None:
    SegmentFile.unpin_all(files)


def _abandon(directory: Path, base: int, end: int) -> None:
    with contextlib.suppress(OSError):
        swap.abandon(directory, base, end)
