"""Committed offsets are fsynced before a commit is answered (issue 15, item 8).

A kill -9 cannot show a missing fsync (the page cache survives the process), so these tests
intercept ``os.fsync`` of the offsets log instead: dropping the fsync from
``OffsetLog.append`` must fail them.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

import streamd.groups.offset_log as offset_log_mod
from streamd.groups.coordinator import CommitOffset
from streamd.groups.model import OffsetInfo, OffsetRecord
from streamd.groups.offset_log import OffsetLog
from streamd.groups.service import GroupService, group_config


def rec(p: int, offset: int) -> OffsetRecord:
    return OffsetRecord("g", "topic", p, OffsetInfo(offset, 1, "", 1))


def test_append_fsyncs_every_byte_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = OffsetLog(tmp_path)
    log.load()
    synced: list[tuple[int, int]] = []
    real = os.fsync

    def recording(fd: int) -> None:
        synced.append((os.fstat(fd).st_ino, os.fstat(fd).st_size))
        real(fd)

    monkeypatch.setattr(offset_log_mod.os, "fsync", recording)
    for i in range(3):
        log.append([rec(i, 10 * i), rec(i + 10, 5)])
        on_disk = log.path.stat()
        assert synced and synced[-1] == (on_disk.st_ino, on_disk.st_size), synced
    assert len(synced) == 3
    log.close()


async def test_a_commit_is_answered_only_after_its_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = GroupService(tmp_path, group_config({"group.initial.rebalance.delay.ms": 0}))
    await svc.open()
    svc.start()
    entered, release = threading.Event(), threading.Event()
    real = os.fsync

    def held(fd: int) -> None:
        entered.set()
        release.wait(10)
        real(fd)

    monkeypatch.setattr(offset_log_mod.os, "fsync", held)
    commit = asyncio.ensure_future(svc.commit("g", -1, "", None, [CommitOffset("t", 0, 42)]))
    assert await asyncio.to_thread(entered.wait, 10), "the commit never fsynced the offsets log"
    assert not commit.done(), "the commit was answered while its fsync was still running"
    release.set()
    assert await commit == [0]
    await svc.close()
