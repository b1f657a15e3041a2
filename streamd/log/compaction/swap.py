"""Cleaned segments on disk: the swap protocol, its crash recovery, and the cleaner checkpoint.

A pass writes each cleaned group next to the segments it replaces (Kafka's ``.cleaned``)::

    <base>.log.cleaned  <base>.index.cleaned  <base>.timeindex.cleaned

and then swaps it in, where ``base`` is the group's first segment and ``end`` the base of the
segment after the group:

1. The cleaner process writes and fsyncs the ``.cleaned`` files.
2. ``<base>.swap`` (holding ``end``) is written atomically (fsync, directory fsync). This is the
   commit point: from here on the swap completes, after a crash too.
3. On the event loop, in one step: the cleaned indexes, then the cleaned log, are renamed over
   ``<base>``'s files, the group's other segments are deleted, and the partition's segment list
   changes (:meth:`streamd.log.partition.PartitionLog.replace_segments`).
4. The directory is fsynced and the marker removed.

A group that cleaning left without any batch is *dropped* rather than swapped: its marker says
so, step 3 deletes all its segments and the previous segment's range grows to the group's end
(offsets in between are a gap). An empty segment would be a useless file, and a run of
segments holding nothing but record-less batches makes librdkafka consumers give up ("might be
too large to fetch": it doubles its fetch size on every answer without a record). The log's
first group is never dropped: its last batch is kept (:mod:`streamd.log.compaction.filter`).

Recovery (:func:`recover_swaps`, before anything else opens the partition) finishes every swap
whose marker exists: renames what is still ``.cleaned``, deletes the group's other segments,
deletes ``<base>``'s old indexes when no cleaned one is left to rename (they are rebuilt), then
removes the marker. Without a marker, ``.cleaned`` files are an unfinished pass and are deleted:
the old segments are intact. A marker whose ``<base>.log`` is gone (the partition was truncated
since) is obsolete and removed. So a kill -9 at any point leaves either the old segments or the
cleaned ones, never a mix and never a partial file that recovery trusts.

The checkpoint (``cleaner-checkpoint``: the first dirty offset and the earliest pending delete
horizon) is written before the first swap of a pass. Recovery accepts offset gaps, and batches
holding fewer records than their offset range, only in segments below it: everything else keeps
the dense-offset check that catches a corrupt tail.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from streamd.log.files import atomic_write, fsync_dir
from streamd.log.index import OffsetIndex, TimeIndex
from streamd.log.segment import Segment, SegmentFile, segment_path

log = logging.getLogger("streamd.log.cleaner")

CHECKPOINT_FILE = "cleaner-checkpoint"
CLEANED = ".cleaned"
SWAP = ".swap"
INDEX_SUFFIXES = (".index", ".timeindex", ".txnindex")
SEGMENT_SUFFIXES = (".log", *INDEX_SUFFIXES)
_BASE = re.compile(r"(\d{20})\.")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    first_dirty: int
    next_horizon: int | None = None
    """When a pass could next remove a kept tombstone or marker (None: nothing pending)."""


def read_checkpoint(directory: Path) -> Checkpoint | None:
    try:
        doc = json.loads((directory / CHECKPOINT_FILE).read_bytes())
        horizon = doc.get("next_horizon")
        return Checkpoint(int(doc["first_dirty"]), None if horizon is None else int(horizon))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
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
    }
    atomic_write(directory / CHECKPOINT_FILE, json.dumps(doc).encode())


def cleaned_path(directory: Path, base: int, suffix: str) -> Path:
    return segment_path(directory, base, suffix + CLEANED)


def marker_path(directory: Path, base: int) -> Path:
    return segment_path(directory, base, SWAP)


def remove_cleaned(directory: Path, base: int) -> None:
    for suffix in SEGMENT_SUFFIXES:
        cleaned_path(directory, base, suffix).unlink(missing_ok=True)


def commit(directory: Path, base: int, end: int, *, drop: bool = False) -> None:
    """Step 2: from now on the swap (or, with ``drop``, the removal) of ``[base, end)``
    completes, even after a crash."""
    doc = {"end": end, "drop": drop}
    atomic_write(marker_path(directory, base), json.dumps(doc).encode())


def install(directory: Path, base: int) -> None:
    """Step 3 on disk: the cleaned files take ``base``'s names (indexes first). Cheap metadata
    operations only; the caller then swaps the segment objects."""
    for suffix in (*INDEX_SUFFIXES, ".log"):
        source = cleaned_path(directory, base, suffix)
        target = segment_path(directory, base, suffix)
        try:
            os.replace(source, target)
        except FileNotFoundError:
            if suffix != ".log":
                target.unlink(missing_ok=True)
            else:
                raise


def finish(directory: Path, base: int) -> None:
    """Step 4: make the renames and deletions durable, then forget the marker."""
    fsync_dir(directory)
    marker_path(directory, base).unlink(missing_ok=True)
    fsync_dir(directory)


def abandon(directory: Path, base: int) -> None:
    """Undo steps 1-2 of a swap that will not happen (the segments changed meanwhile)."""
    remove_cleaned(directory, base)
    marker = marker_path(directory, base)
    if marker.exists():
        marker.unlink()
        fsync_dir(directory)


def load_indexes(directory: Path, base: int, size: int, end: int) -> tuple[OffsetIndex, TimeIndex]:
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
    return offsets, times


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
    indexes: tuple[OffsetIndex, TimeIndex],
    *,
    index_interval_bytes: int,
    created_ms: int,
) -> Segment:
    """The segment object for an installed cleaned file. Its ``next_offset`` is the group's end
    (the next segment's base), whatever offset its last batch ends at."""
    path = segment_path(directory, meta.base_offset, ".log")
    offsets, times = indexes
    segment = Segment(
        directory,
        meta.base_offset,
        index_interval_bytes=index_interval_bytes,
        created_ms=created_ms,
        file=SegmentFile(path),
        offset_index=offsets,
        time_index=times,
    )
    segment.size = segment.readable_size = meta.size
    segment.next_offset = meta.end_offset
    segment.first_timestamp = meta.first_timestamp
    segment.max_timestamp = meta.max_timestamp
    segment.last_batch_base = meta.last_batch_base
    segment.sealed = True
    return segment


def recover_swaps(directory: Path) -> None:
    """Finish the swaps whose marker exists and delete unfinished cleaned files (see the module
    docstring). Runs before the partition's segments are opened."""
    names = [p.name for p in directory.iterdir()]
    for name in sorted(n for n in names if n.endswith(SWAP) and _BASE.match(n)):
        base = int(name[:20])
        marker = directory / name
        try:
            doc = json.loads(marker.read_bytes())
            end, drop = int(doc["end"]), bool(doc.get("drop", False))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable swap marker %s (%s); ignoring it", directory, name, exc)
            marker.unlink(missing_ok=True)
            continue
        cleaned_log = cleaned_path(directory, base, ".log")
        if drop:
            log.warning(
                "%s: completing the removal of cleaned-out segments [%d, %d) after a crash",
                directory,
                base,
                end,
            )
            for other in _segment_bases(directory):
                if base <= other < end:
                    for suffix in SEGMENT_SUFFIXES:
                        segment_path(directory, other, suffix).unlink(missing_ok=True)
            remove_cleaned(directory, base)
            fsync_dir(directory)
            marker.unlink()
            fsync_dir(directory)
            continue
        if not cleaned_log.exists() and not segment_path(directory, base, ".log").exists():
            marker.unlink(missing_ok=True)
            continue
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
        if cleaned_log.exists():
            os.replace(cleaned_log, segment_path(directory, base, ".log"))
        fsync_dir(directory)
        marker.unlink()
        fsync_dir(directory)
    for name in names:
        if name.endswith(CLEANED):
            (directory / name).unlink(missing_ok=True)


def _segment_bases(directory: Path) -> list[int]:
    return sorted(
        int(p.name[:20])
        for p in directory.iterdir()
        if p.name.endswith(".log") and _BASE.match(p.name) and len(p.name) == 24
    )
