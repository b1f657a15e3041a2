import asyncio
import errno
import os
from pathlib import Path

import pytest

import streamd.log.flusher as flusher_mod
from streamd.log.fsync import FsyncPolicy
from streamd.log.manager import LogManager
from streamd.log.syncfs import FilesystemSync
from tests.unit.log.batches import simple_batch

pytestmark = pytest.mark.skipif(
    not FilesystemSync(Path(".")).available, reason="syncfs needs Linux >= 5.8"
)


def open_syncfs_logs(tmp_path: Path) -> LogManager:
    logs = LogManager(tmp_path, fsync=FsyncPolicy.parse("always"), syncfs=True)
    logs.load()
    return logs


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(flusher_mod.os, "fsync", counting)
    return calls


async def test_a_round_over_many_partitions_is_one_syncfs_not_an_fsync_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = open_syncfs_logs(tmp_path)
    topic = logs.create_topic("t", 8, {})
    syncs = 0
    fs_sync = logs.flusher.fs_sync
    assert fs_sync is not None
    real_sync = fs_sync.sync

    def counting_sync() -> None:
        nonlocal syncs
        syncs += 1
        real_sync()

    monkeypatch.setattr(fs_sync, "sync", counting_sync)
    fsyncs = count_fsyncs(monkeypatch)
    await asyncio.gather(*(p.append(simple_batch(3), now_ms=1) for p in topic.partitions))
    assert all(p.high_watermark == 3 for p in topic.partitions)
    assert fsyncs == [], "every file is on the data filesystem: no per-file fsync"
    assert 1 <= syncs <= 2
    await logs.close()


async def test_files_on_another_filesystem_are_still_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = open_syncfs_logs(tmp_path)
    elsewhere, here = logs.create_topic("t", 2, {}).partitions
    elsewhere.active.file.dev = -42  # as if the partition lived on another mount
    fsyncs = count_fsyncs(monkeypatch)
    await asyncio.gather(
        elsewhere.append(simple_batch(1), now_ms=1), here.append(simple_batch(1), now_ms=1)
    )
    assert fsyncs == [elsewhere.active.file.fd]
    assert elsewhere.high_watermark == here.high_watermark == 1
    await logs.close()


async def test_a_syncfs_error_fails_every_waiter_and_nothing_becomes_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = open_syncfs_logs(tmp_path)
    topic = logs.create_topic("t", 3, {})
    fs_sync = logs.flusher.fs_sync
    assert fs_sync is not None

    def failing() -> None:
        raise OSError(errno.EIO, "injected write-back error")

    monkeypatch.setattr(fs_sync, "sync", failing)
    outcome = await asyncio.gather(
        *(p.append(simple_batch(1), now_ms=1) for p in topic.partitions), return_exceptions=True
    )
    assert all(isinstance(o, Exception) and "injected" in str(o) for o in outcome), outcome
    assert all(p.high_watermark == 0 for p in topic.partitions)
    for p in topic.partitions:
        p.discard()
    fs_sync.close()


def test_sync_reports_the_filesystem_of_the_directory(tmp_path: Path) -> None:
    fs_sync = FilesystemSync(tmp_path)
    fs_sync.sync()
    assert fs_sync.covers(os.stat(tmp_path).st_dev)
    assert not fs_sync.covers(-1)
    fs_sync.close()
