"""Crash safety of the swap: a crash at every step of a pass leaves a log that recovery opens
with every latest value, and never a partial cleaned file that it trusts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamd.log.compaction import swap
from streamd.log.compaction.cleaner import CleanerSettings, LogCleaner
from streamd.log.compaction.worker import run_pass
from streamd.log.manager import LogManager
from streamd.log.segment import segment_path

from .helpers import COMPACTED, latest, read_records, write
from .test_cleaner import history

ROWS = [(b"static-%03d" % i, b"s" * 60) for i in range(60)] + history(40, 6)


async def _prepared(tmp_path: Path) -> tuple[Path, list[dict[str, Any]], list[int]]:
    """A sealed compacted partition and a finished pass whose swaps have not started:
    (partition directory, the pass's group messages, the segment bases before it)."""
    logs = LogManager(tmp_path)
    logs.load()
    plog = logs.create_topic("s", 1, COMPACTED).partitions[0]
    await write(plog, ROWS)
    plog.seal_active()
    logs.update_config("s", {"segment.bytes": "6000"})
    cleaner = LogCleaner(logs, CleanerSettings())
    now = 10_000
    request, _ = cleaner._request(plog, cleaner.assess(plog, now), now)
    bases = [s.base_offset for s in plog.segments]
    directory = plog.directory
    await logs.close()
    messages: list[dict[str, Any]] = []
    run_pass(request, messages.append)
    mapped = next(m for m in messages if m["kind"] == "mapped")
    swap.write_checkpoint(directory, swap.Checkpoint(mapped["end_offset"]))
    groups = [m for m in messages if m["kind"] == "group"]
    assert len(groups) >= 2, "the scenario needs several groups"
    assert all(len(g["replaces"]) > 1 for g in groups[:-1]), "and groups of several segments"
    assert all(g["size"] for g in groups), "a group whose records are all gone joins the next"
    return directory, groups, bases


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def _install(directory: Path, group: dict[str, Any]) -> None:
    swap.commit(directory, group["base"], group["end"])
    swap.install(directory, group["base"], group["end"], group["replaces"][1:])


def _crash_before_marker(directory: Path, groups: list[dict[str, Any]]) -> None:
    pass


def _crash_after_commit(directory: Path, groups: list[dict[str, Any]]) -> None:
    swap.commit(directory, groups[0]["base"], groups[0]["end"])


def _crash_after_index_rename(directory: Path, groups: list[dict[str, Any]]) -> None:
    base = groups[0]["base"]
    swap.commit(directory, base, groups[0]["end"])
    for suffix in (".index", ".timeindex"):
        source = swap.cleaned_path(directory, base, suffix)
        assert source.exists()
        os.replace(source, segment_path(directory, base, suffix))


def _crash_after_deleting_the_others(directory: Path, groups: list[dict[str, Any]]) -> None:
    _crash_after_index_rename(directory, groups)
    for base in groups[0]["replaces"][1:-1]:
        for suffix in swap.SEGMENT_SUFFIXES:
            segment_path(directory, base, suffix).unlink(missing_ok=True)


def _crash_after_log_rename(directory: Path, groups: list[dict[str, Any]]) -> None:
    swap.commit(directory, groups[0]["base"], groups[0]["end"])
    swap.install(directory, groups[0]["base"], groups[0]["end"], groups[0]["replaces"][1:])


def _crash_before_the_last_fsync(directory: Path, groups: list[dict[str, Any]]) -> None:
    _install(directory, groups[0])


def _crash_in_second_group(directory: Path, groups: list[dict[str, Any]]) -> None:
    _install(directory, groups[0])
    swap.finish(directory, groups[0]["replaces"][1:])
    _crash_after_log_rename(directory, groups[1:])


def _crash_with_torn_cleaned_file(directory: Path, groups: list[dict[str, Any]]) -> None:
    path = swap.cleaned_path(directory, groups[0]["base"], ".log")
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


CRASHES: list[Callable[[Path, list[dict[str, Any]]], None]] = [
    _crash_before_marker,
    _crash_with_torn_cleaned_file,
    _crash_after_commit,
    _crash_after_index_rename,
    _crash_after_deleting_the_others,
    _crash_after_log_rename,
    _crash_before_the_last_fsync,
    _crash_in_second_group,
]


@pytest.mark.parametrize("crash", CRASHES, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("clean_shutdown", [True, False], ids=["marker", "no-marker"])
async def test_recovery_after_a_crash_at_any_step_keeps_every_latest_value(
    tmp_path: Path,
    crash: Callable[[Path, list[dict[str, Any]]], None],
    clean_shutdown: bool,
) -> None:
    directory, groups, _ = await _prepared(tmp_path)
    end = max(g["end"] for g in groups)
    crash(directory, groups)
    if not clean_shutdown:
        (directory / "clean-shutdown").unlink(missing_ok=True)
    logs = LogManager(tmp_path)
    logs.load()
    plog = logs.partition("s", 0)
    records = read_records(plog)
    offsets = [o for o, _, _ in records]
    assert offsets == sorted(set(offsets))
    state: dict[bytes, bytes] = {}
    for _, key, value in records:
        assert key is not None and value is not None
        state[key] = value
    assert state == latest(ROWS)
    assert plog.log_end_offset >= end
    leftovers = {n for n in _files(directory) if n.endswith((".cleaned", ".swap", ".deleted"))}
    assert leftovers == set()
    await logs.close()
