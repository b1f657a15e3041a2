"""Cleaned segments on disk: the swap protocol, its crash recovery, and the cleaner checkpoint.

A pass writes each cleaned group next to the segments it replaces (Kafka's ``.cleaned``)::

    <base>.log.cleaned  <base>.index.cleaned  <base>.timeindex.cleaned

and then swaps it in, where ``base`` is the group's first segment and ``end`` the base of the
segment after the group:

1. The cleaner process writes the ``.cleaned`` files and fsyncs the log.
2. Commit: ``<base>.log.cleaned`` is renamed to ``<base>.<end>.swap`` and the directory is
   fsynced. From here on the swap completes, after a crash too.
3. On the event loop, in one step: the cleaned indexes are renamed over ``<base>``'s, the
   group's other segments are deleted, the ``.swap`` file becomes ``<base>.log`` (last: until
   then the ``.swap`` file is there to tell recovery what to finish), and the partition's
   segment list changes (:meth:`streamd.log.partition.PartitionLog.replace_segments`).
4. Off the loop: the directory is fsynced, then the replaced segments are deleted.

Three fsyncs per group (Kafka's ``.cleaned`` -> ``.swap`` -> ``.log`` needs as many): with the
broker's own group commit syncing the same filesystem, every extra journal commit shows up in
produce latency while a pass runs.

Recovery (:func:`recover_swaps`, before anything else opens the partition) finishes every
committed swap: it deletes the group's other segments (and ``.deleted`` leftovers), renames
the cleaned indexes that are still ``.cleaned`` (or deletes ``<base>``'s old ones, which are
rebuilt), and renames the ``.swap`` file to ``<base>.log``. Uncommitted ``.cleaned`` files are
an unfinished pass and are deleted: the old segments are intact. So a kill -9 at any point
leaves either the old segments or the cleaned ones, never a mix and never a partial file that
recovery trusts.

A cleaned segment always ends where the group it replaces ended (its last batch is kept, empty
if need be, see :mod:`streamd.log.compaction.filter`), and a group whose records are all gone
is cleaned together with the next one (:mod:`streamd.log.compaction.worker`): segment ranges
stay contiguous, as archived segments need them to be.

The checkpoint (``cleaner-checkpoint``: the first dirty offset and the earliest pending delete
horizon) is written before the first swap of a pass. Recovery accepts offset gaps, and batches
holding fewer records than their offset range, only in segments below it: everything else keeps
the dense-offset check that catches a corrupt tail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamd.log.files import atomic_write, fsync_dir
from streamd.log.index import OffsetIndex, TimeIndex
from streamd.log.segment import Segment, SegmentFile, segment_path
from streamd.log.txn_index import SUFFIX as TXN_INDEX_SUFFIX
from streamd.log.txn_index import TxnIndex

log = logging.getLogger("streamd.log.cleaner")

CHECKPOINT_FILE = "cleaner-checkpoint"
CLEANED = ".cleaned"
SWAP = ".swap"
DELETED = ".deleted"
INDEX_SUFFIXES = (".index", ".timeindex", ".txnindex")
SEGMENT_SUFFIXES = (".log", *INDEX_SUFFIXES)
_BASE = re.compile(r"(\d{20})\.")
_COMMITTED = re.compile(r"(\d{20})\.(\d{20})\.swap")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    first_dirty: int
    next_horizon: int | None = None
    """When a pass could next remove a kept tombstone or marker (None: nothing pending)."""
    horizons: Mapping[int, int] = field(default_factory=dict)
    """Base offset of each cleaned segment that still holds a tombstone or a marker waiting for
    its delete horizon -> that horizon. Such a segment is not *settled*: a tiered compacted
    topic keeps it on local disk until a later pass has removed them (the archive would
    otherwise keep them for good)."""


def read_checkpoint(directory: Path) -> Checkpoint | None:
    try:
        doc = json.loads((directory / CHECKPOINT_FILE).read_bytes())
        horizon = doc.get("next_horizon")
        horizons = {int(b): int(h) for b, h in doc.get("horizons", {}).items()}
        return Checkpoint(
            int(doc["first_dirty"]), None if horizon is None else int(horizon), horizons
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning(
            "%s: unreadable %s (%s); cleaning restarts at the log start",
            directory,
            CHECKPOINT_FILE,
            exc,
        )
        return None


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    doc = {
        "version": 1,
        "first_dirty": checkpoint.first_dirty,
        "next_horizon": checkpoint.next_horizon,
        "horizons": {str(b): h for b, h in sorted(checkpoint.horizons.items())},
    }
    atomic_write(directory / CHECKPOINT_FILE, json.dumps(doc).encode())


def cleaned_path(directory: Path, base: int, suffix: str) -> Path:
    return segment_path(directory, base, suffix + CLEANED)


def swap_path(directory: Path, base: int, end: int) -> Path:
    return directory / f"{base:020d}.{end:020d}{SWAP}"


def remove_cleaned(directory: Path, base: int) -> None:
    for suffix in SEGMENT_SUFFIXES:
        cleaned_path(directory, base, suffix).unlink(missing_ok=True)


def commit(directory: Path, base: int, end: int) -> None:
    """Step 2: from now on the swap of ``[base, end)`` completes, even after a crash."""
    os.replace(cleaned_path(directory, base, ".log"), swap_path(directory, base, end))
    fsync_dir(directory)


def install(directory: Path, base: int, end: int, others: Sequence[int]) -> None:
    """Step 3 on disk: the cleaned indexes take ``base``'s names, the group's ``others``
    segments are renamed away (``.deleted``), and only then the ``.swap`` file becomes
    ``<base>.log``, so that any prefix of these operations that reaches the disk still has the
    ``.swap`` file that tells recovery to finish them. Renames only (no file is freed here: that
    can take milliseconds per segment, and this runs on the event loop); the caller then swaps
    the segment objects and :func:`finish` deletes the ``.deleted`` files."""
    for suffix in INDEX_SUFFIXES:
        source = cleaned_path(directory, base, suffix)
        target = segment_path(directory, base, suffix)
        try:
            os.replace(source, target)
        except FileNotFoundError:
            target.unlink(missing_ok=True)
    for other in others:
        for suffix in SEGMENT_SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                path = segment_path(directory, other, suffix)
                os.replace(path, path.with_name(path.name + DELETED))
    os.replace(swap_path(directory, base, end), segment_path(directory, base, ".log"))


def finish(directory: Path, gone: Sequence[int]) -> None:
    """Step 4, off the event loop: make the renames durable, then delete the replaced
    segments ``gone`` (renamed away by :func:`install`)."""
    fsync_dir(directory)
    for other in gone:
        for suffix in SEGMENT_SUFFIXES:
            path = segment_path(directory, other, suffix)
            path.with_name(path.name + DELETED).unlink(missing_ok=True)


def abandon(directory: Path, base: int, end: int) -> None:
    """Undo steps 1-2 of a swap that will not happen (the segments changed meanwhile)."""
    remove_cleaned(directory, base)
    committed = swap_path(directory, base, end)
    if committed.exists():
        committed.unlink()
        fsync_dir(directory)


def load_indexes(
    directory: Path, base: int, size: int, end: int
) -> tuple[OffsetIndex, TimeIndex, TxnIndex]:
    """The cleaned indexes of ``base`` (read before they are renamed; empty when the cleaned
    segment has none), addressed by their final names."""
    offsets = OffsetIndex.load(
        cleaned_path(directory, base, ".index"), base, log_size=max(size, 1), next_offset=end
    ) or OffsetIndex(cleaned_path(directory, base, ".index"), base)
    times = TimeIndex.load(
        cleaned_path(directory, base, ".timeindex"), base, next_offset=end
    ) or TimeIndex(cleaned_path(directory, base, ".timeindex"), base)
    offsets.path = segment_path(directory, base, ".index")
    times.path = segment_path(directory, base, ".timeindex")
    aborted = TxnIndex.load(cleaned_path(directory, base, TXN_INDEX_SUFFIX), base, end)
    txns = TxnIndex(
        segment_path(directory, base, TXN_INDEX_SUFFIX), aborted.entries if aborted else []
    )
    return offsets, times, txns


@dataclass(frozen=True, slots=True)
class CleanedSegment:
    """What the cleaner process reports about one cleaned group."""

    base_offset: int
    end_offset: int
    size: int
    first_timestamp: int
    max_timestamp: int
    last_batch_base: int


def open_cleaned_segment(
    directory: Path,
    meta: CleanedSegment,
    indexes: tuple[OffsetIndex, TimeIndex, TxnIndex],
    *,
    index_interval_bytes: int,
    created_ms: int,
) -> Segment:
    """The segment object for an installed cleaned file. Its ``next_offset`` is the group's end
    (the next segment's base), whatever offset its last batch ends at."""
    path = segment_path(directory, meta.base_offset, ".log")
    offsets, times, txns = indexes
    segment = Segment(
        directory,
        meta.base_offset,
        index_interval_bytes=index_interval_bytes,
        created_ms=created_ms,
        file=SegmentFile(path, create=False),
        offset_index=offsets,
        time_index=times,
    )
    segment.size = segment.readable_size = meta.size
    segment.next_offset = meta.end_offset
    segment.first_timestamp = meta.first_timestamp
    segment.max_timestamp = meta.max_timestamp
    segment.last_batch_base = meta.last_batch_base
    segment.txn_index = txns
    segment.sealed = True
    return segment


def recover_swaps(directory: Path) -> None:
    """Finish every committed swap and delete unfinished cleaned files (see the module
    docstring). Runs before the partition's segments are opened."""
    names = sorted(p.name for p in directory.iterdir())
    changed = False
    for name in names:
        found = _COMMITTED.fullmatch(name)
        if found is None:
            continue
        base, end = int(found.group(1)), int(found.group(2))
        log.warning(
            "%s: completing the swap of cleaned segments [%d, %d) after a crash",
            directory,
            base,
            end,
        )
        for other in _segment_bases(directory):
            if base < other < end:
                for suffix in SEGMENT_SUFFIXES:
                    segment_path(directory, other, suffix).unlink(missing_ok=True)
        for suffix in INDEX_SUFFIXES:
            source = cleaned_path(directory, base, suffix)
            if source.exists():
                os.replace(source, segment_path(directory, base, suffix))
            elif suffix != ".txnindex":
                segment_path(directory, base, suffix).unlink(missing_ok=True)
        os.replace(directory / name, segment_path(directory, base, ".log"))
        fsync_dir(directory)
        changed = True
    for name in names:
        if name.endswith((CLEANED, DELETED)):
            (directory / name).unlink(missing_ok=True)
    if changed:
        fsync_dir(directory)


def _segment_bases(directory: Path) -> list[int]:
    return sorted(
        int(p.name[:20])
        for p in directory.iterdir()
        if p.name.endswith(".log") and _BASE.match(p.name) and len(p.name) == 24
    )
