"""Remote reads keep off the event loop's default executor: the log flushes (fsync) there, so a
replay's cache file reads and writes and its checksums of large ranges must not queue in front
of a producer's flush (issue 14 item 9: live produce -> consume latency during a replay)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from streamd.log.batch import validate_produce_batches
from tests.unit.tiering.test_service import TIERED, Env, fill


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(2)
        self.submitted: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        inner = fn
        if isinstance(fn, functools.partial):  # asyncio.to_thread: partial(context.run, f, ...)
            inner = next((a for a in fn.args if callable(a)), fn.func)
        self.submitted.append(getattr(inner, "__qualname__", type(inner).__name__))
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    yield e
    if e.service is not None:
        e.logs.tiering_veto = None
        await e.service.close()
    await e.logs.close()


async def test_remote_reads_leave_the_default_executor_to_the_log(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED)
    await fill(env.logs, "t", 120)
    plog = env.logs.partition("t", 0)
    service = await env.open_service(chunk=1024)
    await env.tick_and_housekeep()
    assert plog.log_start_offset > 100
    default = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(default)
    offset = 0
    while offset < plog.log_start_offset:
        data = await service.read("t", 0, offset, 1 << 20, True)
        offset = validate_produce_batches(data, 1 << 30)[-1].next_offset
    chunks = -(-sum(seg.size_bytes for seg in service._states[("t", 0)].manifest.segments) // 1024)
    for _ in range(500):  # cache files may be written behind the reads: wait for them
        if service.cache.stats.entries >= chunks:
            break
        await asyncio.sleep(0.01)
    assert service.cache.stats.entries >= chunks, "every chunk read was cached on disk"
    used = [name for name in default.submitted if "ChunkCache" in name or "verify" in name]
    assert used == [], f"remote reads used the default executor: {used[:5]}"
