"""Group commit across partitions: one worker-thread job writes and fsyncs for all of them.

With fsync "always" every partition needs its deferred writes written and fsynced before it
acknowledges. Done per partition, eight busy partitions cost eight executor jobs and eight
journal commits racing each other. The shared flusher instead runs one job at a time: it takes
the pending work of every partition that asked since the previous job started, writes it all,
fsyncs each file, and then releases every waiter. A partition that asks while a job runs is
served by the next one, so nothing waits longer than one job plus its own.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamd.log.partition import PartitionLog
    from streamd.log.syncfs import FilesystemSync


class SharedFlusher:
    def __init__(self, fs_sync: FilesystemSync | None = None) -> None:
        self._queue: dict[int, tuple[PartitionLog, asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.fs_sync = fs_sync
        """When set (and available), a round ends with one syncfs instead of fsync per file."""

    def flush(self, plog: PartitionLog) -> asyncio.Future[None]:
        """A future resolved when a job that took ``plog``'s current pending work is done."""
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
        from streamd.log.partition import run_flush_jobs

        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = list(self._queue.values()), {}
                jobs = [plog.take_flush_job() for plog, _ in batch]
                try:
                    errors = await loop.run_in_executor(None, run_flush_jobs, jobs, self.fs_sync)
                except Exception as exc:  # every waiter must hear of it, or produce would hang
                    errors = [exc] * len(jobs)
                for (plog, fut), job, error in zip(batch, jobs, errors, strict=True):
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
