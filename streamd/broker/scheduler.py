"""The broker's periodic jobs, all driven by one apscheduler ``AsyncIOScheduler``.

Each job is a coroutine run every ``interval_ms`` on the event loop: at most one run at a
time (``max_instances=1``), missed runs collapse into one (``coalesce``), and a run that was due
while the loop was busy still happens (no misfire grace limit: a late housekeeping pass is
better than a skipped one). A job never raises into the scheduler: a failure is logged with
the job's own message and the next run retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger("streamd")


class Jobs:
    def __init__(self) -> None:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self._scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        self.names: list[str] = []

    def every(
        self, name: str, interval_ms: int, run: Callable[[], Awaitable[None]], *, on_error: str
    ) -> None:
        """Run ``run()`` every ``interval_ms``; ``on_error`` is logged (with the traceback)
        when a run raises."""

        async def guarded() -> None:
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s", on_error)

        self._scheduler.add_job(
            guarded,
            "interval",
            seconds=max(1, interval_ms) / 1000,
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        self.names.append(name)

    def reschedule(self, name: str, interval_ms: int) -> None:
        """A new interval for job ``name`` (a dynamic config changed); the next run is one
        new interval from now."""
        self._scheduler.reschedule_job(name, trigger="interval", seconds=max(1, interval_ms) / 1000)

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self._scheduler.shutdown(wait=False)
