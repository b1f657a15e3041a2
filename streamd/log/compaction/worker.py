"""One cleaning pass over one partition's files, run in the cleaner process.

Why a process: cleaning decodes every record of the segments it rewrites, which in Python is
CPU work that holds the GIL; in a thread it would steal the event loop's time slices and show
up in every produce and fetch latency. A separate process (started with ``nice`` 10, reading
with an I/O rate limit, dropping the pages it read and wrote from the page cache) leaves the
broker's loop alone. The process only reads sealed, immutable segments and writes
``.cleaned`` files; every decision that changes the partition (the swap) is the broker's
(:mod:`streamd.log.compaction.cleaner`), so killing the process at any moment is harmless.

Protocol: one JSON object per line. The broker writes a pass request (:class:`PassRequest` as a
dict) to stdin; the process answers on stdout with ``mapped``, then one ``group`` per cleaned
group (its files are complete and fsynced when the line is written), then ``done`` or
``error``. EOF on stdin ends the process; so does the broker's death (parent-death signal,
and a parent check between chunks where that signal is not available).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamd.errors import StreamdError
from streamd.log.batch import HEADER_SIZE, LOG_OVERHEAD, BatchHeader, check_batch, parse_header
from streamd.log.compaction.filter import BatchFilter, FilterStats, ProducerTail, map_batch
from streamd.log.compaction.keymap import KeyMap
from streamd.log.compaction.plan import MAX_RELATIVE_OFFSET, SegmentInfo, group_segments
from streamd.log.compaction.swap import cleaned_path, remove_cleaned
from streamd.log.compaction.txn import AbortedTxn, TxnTracker
from streamd.log.files import atomic_write, pread_exactly
from streamd.log.index import OffsetIndex, TimeIndex
from streamd.log.segment import NO_TIMESTAMP, Segment, SegmentFile, segment_path
from streamd.log.txn_index import SUFFIX as TXN_INDEX_SUFFIX
from streamd.log.txn_index import encode_entries

CHUNK = 1 << 20
"""Bytes read (and written) per system call."""

Emit = Callable[[dict[str, Any]], None]


@dataclass
class PassRequest:
    directory: str
    segments: list[tuple[int, int, int]]
    """(base offset, end offset, size) of every sealed segment from the log's first one up to
    the first uncleanable offset, in order."""
    first_dirty: int
    first_uncleanable: int
    dirty_position: int
    """File position of the batch holding ``first_dirty`` in its segment."""
    now_ms: int
    delete_retention_ms: int
    segment_bytes: int
    index_interval_bytes: int
    map_bytes: int
    io_bytes_per_second: int
    producers: list[tuple[int, int | None, int]] = field(default_factory=list)
    """(producer id, last data offset or None, epoch) of every active producer."""
    aborted: list[tuple[int, int, int, int]] = field(default_factory=list)
    """Aborted transactions (producer id, first, last, last stable offset) in the range."""


class Throttle:
    """Keeps the bytes read and written under ``rate`` per second (0: no limit), measured over
    windows of about a second so a burst after a quiet moment is still paced."""

    def __init__(self, rate: int, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self._sleep = sleep
        self._start = time.monotonic()
        self._bytes = 0
        self.slept = 0.0

    def note(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        self._bytes += nbytes
        elapsed = time.monotonic() - self._start
        wanted = self._bytes / self.rate
        if wanted > elapsed:
            self._sleep(wanted - elapsed)
            self.slept += wanted - elapsed
        if elapsed > 1.0:
            self._start = time.monotonic()
            self._bytes = 0


class ParentGone(Exception):
    pass


def read_batches(
    path: Path, start: int, size: int, throttle: Throttle, alive: Callable[[], bool]
) -> Iterator[tuple[memoryview, BatchHeader]]:
    """Every batch of ``path`` in ``[start, size)``, CRC-checked, read in chunks; the pages are
    dropped from the page cache behind the reader."""
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = start
        while pos < size:
            if not alive():
                raise ParentGone
            data = pread_exactly(fd, min(CHUNK, size - pos), pos, path.name)
            view = memoryview(data)
            off = 0
            while off + HEADER_SIZE <= len(data):
                total = int.from_bytes(data[off + 8 : off + 12], "big", signed=True) + LOG_OVERHEAD
                if off + total > len(data):
                    break
                yield view[off : off + total], check_batch(view, off, off + total, compacted=True)
                off += total
            if off == 0:
                head = pread_exactly(fd, HEADER_SIZE, pos, path.name)
                total = int.from_bytes(head[8:12], "big", signed=True) + LOG_OVERHEAD
                whole = pread_exactly(fd, max(total, HEADER_SIZE), pos, path.name)
                yield memoryview(whole), check_batch(whole, 0, len(whole), compacted=True)
                off = len(whole)
            throttle.note(off)
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, pos, off, os.POSIX_FADV_DONTNEED)
            pos += off
    finally:
        os.close(fd)


class _Writer:
    """A cleaned segment being written: batches buffered into large writes, indexes tracked
    the way a live segment tracks them."""

    def __init__(self, directory: Path, base: int, interval: int, now_ms: int) -> None:
        remove_cleaned(directory, base)
        self.directory = directory
        self.base = base
        self.segment = Segment(
            directory,
            base,
            index_interval_bytes=interval,
            created_ms=now_ms,
            file=SegmentFile(cleaned_path(directory, base, ".log")),
            offset_index=OffsetIndex(cleaned_path(directory, base, ".index"), base),
            time_index=TimeIndex(cleaned_path(directory, base, ".timeindex"), base),
        )
        self.now_ms = now_ms
        self._parts: list[bytes | memoryview] = []
        self._headers: list[BatchHeader] = []
        self._pending = 0

    def add(self, data: bytes | memoryview, header: BatchHeader) -> int:
        self._parts.append(bytes(data) if isinstance(data, memoryview) else data)
        self._headers.append(header)
        self._pending += len(data)
        if self._pending >= CHUNK:
            return self.flush()
        return 0

    def flush(self) -> int:
        if not self._parts:
            return 0
        data = b"".join(self._parts)
        self.segment.append(data, self._headers, self.now_ms)
        self._parts, self._headers, self._pending = [], [], 0
        return len(data)

    def close(self) -> Segment:
        """Seal and fsync the log (the commit renames it; its indexes are derived data that
        recovery checks against it and rebuilds, so they are not fsynced: one journal
        commit less per group)."""
        self.flush()
        segment = self.segment
        segment.seal()
        segment.fsync()
        with contextlib.suppress(OSError):
            fd = segment.file.fd
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        segment.close()
        return segment


def run_pass(
    request: PassRequest, emit: Emit, alive: Callable[[], bool] = lambda: True
) -> FilterStats:
    """Map the dirty section, then clean every group below the mapped end into ``.cleaned``
    files, reporting each as soon as it is durable (see the module docstring).

    A group whose records are all gone is not written alone: the next group is cleaned into
    the same file. A segment holding nothing but record-less batches would be a file for
    nothing, and a run of them makes librdkafka consumers give up ("might be too large to
    fetch": it doubles its fetch size on every answer without a record)."""
    directory = Path(request.directory)
    throttle = Throttle(request.io_bytes_per_second)
    started = time.monotonic()
    segments = [SegmentInfo(b, e, s, NO_TIMESTAMP, NO_TIMESTAMP) for b, e, s in request.segments]
    keymap = KeyMap(request.map_bytes)
    aborted = [AbortedTxn(*a) for a in request.aborted]
    end_offset, full, map_bytes = _build_map(request, segments, keymap, aborted, throttle, alive)
    emit(
        {
            "kind": "mapped",
            "end_offset": end_offset,
            "entries": len(keymap),
            "capacity": keymap.capacity,
            "full": full,
            "bytes": map_bytes,
            "seconds": time.monotonic() - started,
        }
    )
    to_clean = [s for s in segments if s.base_offset < end_offset]
    cleaned_end = to_clean[-1].end_offset if to_clean else end_offset
    first_base = segments[0].base_offset if segments else end_offset
    txn = TxnTracker()
    txn.add_aborted(
        a for a in aborted if a.last_offset >= first_base and a.first_offset < cleaned_end
    )
    producers = {pid: ProducerTail(last, epoch) for pid, last, epoch in request.producers}
    filt = BatchFilter(
        keymap,
        txn,
        producers,
        request.first_uncleanable,
        request.now_ms,
        request.delete_retention_ms,
    )
    total = FilterStats()
    groups = group_segments(to_clean, request.segment_bytes, request.first_uncleanable)
    writer: _Writer | None = None
    replaces: list[int] = []
    for n, group in enumerate(groups):
        if writer is None:
            filt.stats = FilterStats()
            txn.retained_aborts = []
            base = group[0].base_offset
            writer = _Writer(directory, base, request.index_interval_bytes, request.now_ms)
            replaces = []
        end = group[-1].end_offset
        filt.group_end = end
        for info in group:
            path = segment_path(directory, info.base_offset, ".log")
            for batch, header in read_batches(path, 0, info.size, throttle, alive):
                out = filt.apply(batch, header)
                if out is not None:
                    out_header = header if out is batch else parse_header(out)
                    throttle.note(writer.add(out, out_header))
            replaces.append(info.base_offset)
        following = groups[n + 1] if n + 1 < len(groups) else None
        if (
            filt.stats.records_written == 0
            and following is not None
            and following[-1].end_offset - 1 - base <= MAX_RELATIVE_OFFSET
        ):
            continue
        throttle.note(writer.flush())
        segment = writer.close()
        writer = None
        # Always written (empty too): after a crash, recovery tells a transaction index still
        # to rename from one already renamed by whether the cleaned file is there.
        atomic_write(
            cleaned_path(directory, base, TXN_INDEX_SUFFIX), encode_entries(txn.retained_aborts)
        )
        emit(
            {
                "kind": "group",
                "base": base,
                "end": end,
                "replaces": replaces,
                "size": segment.size,
                "first_timestamp": segment.first_timestamp,
                "max_timestamp": segment.max_timestamp,
                "last_batch_base": segment.last_batch_base,
                "aborts": [list(asdict(a).values()) for a in txn.retained_aborts],
                "stats": asdict(filt.stats),
            }
        )
        total.merge(filt.stats)
    emit(
        {
            "kind": "done",
            "end_offset": end_offset,
            "stats": asdict(total),
            "map_entries": len(keymap),
            "map_capacity": keymap.capacity,
            "map_bytes": map_bytes,
            "throttled_seconds": throttle.slept,
            "seconds": time.monotonic() - started,
        }
    )
    return total


def _build_map(
    request: PassRequest,
    segments: list[SegmentInfo],
    keymap: KeyMap,
    aborted: list[AbortedTxn],
    throttle: Throttle,
    alive: Callable[[], bool],
) -> tuple[int, bool, int]:
    """Returns (end of the mapped range, whether the map filled up, bytes read)."""
    start, bound = request.first_dirty, request.first_uncleanable
    keymap.latest_offset = start - 1
    dirty = [s for s in segments if s.end_offset > start and s.base_offset < bound]
    if not dirty:
        return start, False, 0
    txn = TxnTracker()
    txn.add_aborted(a for a in aborted if a.last_offset >= start and a.first_offset < bound)
    read = 0
    for info in dirty:
        path = segment_path(Path(request.directory), info.base_offset, ".log")
        position = request.dirty_position if info.base_offset <= start else 0
        for batch, header in read_batches(path, position, info.size, throttle, alive):
            read += header.size
            first_batch = keymap.latest_offset < start
            if not map_batch(keymap, txn, batch, header, start):
                if not first_batch:
                    return keymap.latest_offset + 1, True, read
                keymap.capacity = len(keymap) + header.records_count
                map_batch(keymap, txn, batch, header, start)
        keymap.latest_offset = max(keymap.latest_offset, min(info.end_offset, bound) - 1)
    return keymap.latest_offset + 1, False, read


def _parent_check() -> Callable[[], bool]:
    parent = os.getppid()
    return lambda: os.getppid() == parent


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the broker dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError, ImportError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def _yield_to_the_broker() -> None:
    """Run only on CPU time nobody else wants (SCHED_IDLE where the OS has it, else nice 19):
    the broker's event loop, and its fsync threads, are never preempted by a pass."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(19)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    _idle_io()


def _idle_io() -> None:
    """Disk I/O in the idle class (ioprio_set), which mq-deadline, BFQ and CFQ serve only when
    no other process waits: the broker's fsyncs go first. Linux x86-64/arm64 only."""
    numbers = {"x86_64": 251, "aarch64": 30}
    number = numbers.get(os.uname().machine)
    if number is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(number, 1, 0, 3 << 13)


def main() -> None:
    _die_with_parent()
    _yield_to_the_broker()
    alive = _parent_check()
    out = sys.stdout

    def emit(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = PassRequest(**json.loads(line))
            run_pass(request, emit, alive)
        except ParentGone:
            return
        except (OSError, StreamdError, ValueError, TypeError, KeyError) as exc:
            emit({"kind": "error", "message": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
