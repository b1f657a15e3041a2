"""Group commit: one worker-thread job writes and fsyncs for every partition that asked.

With fsync "always" every partition needs its deferred writes written and fsynced before it
acknowledges. Done per partition, eight busy partitions cost eight executor jobs and eight
journal commits racing each other. The shared flusher instead runs one job at a time: it takes
the pending work of every partition that asked since the previous job started, writes it all,
fsyncs each file, and then releases every waiter. A partition that asks while a job runs is
served by the next one, so nothing waits longer than one job plus its own. This is the only
path by which deferred writes reach the disk (a partition opened on its own gets a flusher of
its own). A round pins at most half of the descriptor cache's limit: partitions beyond that
wait for the next round, so a produce to thousands of partitions never needs thousands of
descriptors at once.

Invariant 11: a write that cannot happen fails its waiters. Every file a job writes or syncs is
pinned open (see :mod:`streamd.log.descriptors`) from the moment the job is taken until the
partition has heard the outcome; a job that still finds a file without a descriptor fails
instead of skipping it, and a job never reports success for bytes it did not write.
"""

from __future__ import annotations

import asyncio
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from streamd.log.descriptors import DESCRIPTORS
from streamd.log.files import fsync_dir

if TYPE_CHECKING:
    from streamd.log.segment import Segment, SegmentFile
    from streamd.log.syncfs import FilesystemSync


@dataclass(slots=True)
class FlushJob:
    """One partition's share of a flush round; every file in it is pinned by the partition."""

    target: int
    """The log end offset when the job was taken: durable once the job succeeds."""
    pending: list[tuple[Segment, bytes | bytearray, int]]
    """Deferred batches in append order: (segment, bytes, segment size after them)."""
    files: list[SegmentFile]
    directory: Path | None
    page_cache_window: int = -1
    pinned: list[SegmentFile] = field(default_factory=list)


class FlushClient(Protocol):
    """What the flusher needs of a partition (:class:`streamd.log.partition.PartitionLog`)."""

    def take_flush_job(self) -> FlushJob: ...

    def finish_flush_job(self, job: FlushJob, error: BaseException | None) -> None: ...


class SharedFlusher:
    def __init__(self, fs_sync: FilesystemSync | None = None) -> None:
        self._queue: dict[int, tuple[FlushClient, asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.fs_sync = fs_sync
        """When set (and available), a round ends with one syncfs instead of fsync per file."""

    def flush(self, plog: FlushClient) -> asyncio.Future[None]:
        """A future resolved when a job that took ``plog``'s current pending work is done
        (and so also every job of ``plog`` already running)."""
        entry = self._queue.get(id(plog))
        if entry is not None:
            return entry[1]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue[id(plog)] = (plog, fut)
        if self._task is None:
            self._task = loop.create_task(self._run())
        return fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                budget = max(1, DESCRIPTORS.limit // 2)
                jobs: list[FlushJob] = []
                taken: list[tuple[FlushClient, asyncio.Future[None]]] = []
                pinned = 0
                while self._queue and pinned < budget:
                    plog, fut = self._queue.pop(next(iter(self._queue)))
                    try:
                        job = plog.take_flush_job()
                    except Exception as exc:  # the partition cannot start a job: tell its waiters
                        if not fut.done():
                            fut.set_exception(exc)
                        continue
                    jobs.append(job)
                    taken.append((plog, fut))
                    pinned += len(job.pinned)
                errors: list[BaseException | None]
                try:
                    errors = await loop.run_in_executor(None, run_flush_jobs, jobs, self.fs_sync)
                except Exception as exc:  # every waiter must hear of it, or produce would hang
                    errors = [exc] * len(jobs)
                for (plog, fut), job, error in zip(taken, jobs, errors, strict=True):
                    try:
                        plog.finish_flush_job(job, error)
                    except Exception as exc:
                        if not fut.done():
                            fut.set_exception(exc)
                    else:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._task = None


def run_flush_jobs(
    jobs: list[FlushJob], fs_sync: FilesystemSync | None = None
) -> list[BaseException | None]:
    """Write every job's deferred batches, then make them durable: in a worker thread, never
    on the loop. All writes go first so that the disk sees them before the first sync of the
    round. With ``fs_sync`` the files on its filesystem are synced by one ``syncfs`` (see
    :mod:`streamd.log.syncfs`), the others by fsync. Returns one outcome per job."""
    errors: list[BaseException | None] = []
    for job in jobs:
        try:
            for segment, data, _ in job.pending:
                fd = _descriptor(segment.file)
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
    return errors


def _descriptor(file: SegmentFile) -> int:
    fd = file.pinned_fd
    if fd < 0:
        raise OSError(errno.EBADF, f"segment file {file.path.name} is not open")
    return fd


def _syncfs_round(
    jobs: list[FlushJob], errors: list[BaseException | None], fs_sync: FilesystemSync
) -> None:
    try:
        covered = fs_sync.covers
        for i, job in enumerate(jobs):
            if errors[i] is None:
                try:
                    others = [f for f in job.files if not covered(f.dev)]
                    directory = job.directory
                    if directory is not None and covered(os.stat(directory).st_dev):
                        directory = None
                    if others or directory is not None:
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
        os.fsync(_descriptor(file))
        file.drop_synced(keep)
    if directory is not None:
        fsync_dir(directory)
