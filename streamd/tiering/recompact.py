"""Compacted topics on tiered storage: which archived objects the log cleaner has outdated.

Kafka does not tier compacted topics (KIP-405 excludes them); streamd does, as Redpanda does. A
compacted topic's segments are archived as they are sealed, like any other's, so the bucket
holds the tail a restore needs. The log cleaner later rewrites local segments (several at once,
possibly across the boundaries the uploads had), and the archive must follow, so that a
consumer replaying from the bucket sees the compacted view and restore restores it: the
cleaned local segments are uploaded again and replace the archived entries they cover
(:func:`streamd.tiering.manifest.replace_segments`), whose objects are deleted once the new
manifest is stored.

Which entries are outdated is decided from the two offset layouts alone, sans-IO:
:func:`stale_units` pairs runs of local segments with runs of archived entries that cover the
same offsets (their boundaries coincide at both ends). A unit is in sync when its local bytes
are those that were archived: uploads copy local files verbatim (one or several per object),
so their total sizes are equal; the cleaner never rewrites a segment to the same size unless
it copied every batch unchanged. A unit is stale when its sizes differ, or when its local side
goes past the end of the archive (a cleaned segment that merged archived and unarchived
offsets; it replaces the archive's tail and extends it). Only local segments the cleaner has
processed (below its checkpoint) are re-uploaded: until then the archive holds their bytes
already.

What the archive cannot do: the cleaner works on local segments only, so offsets that have
left local disk are not compacted again against later writes. A replay from the bucket then
sees the latest value of every key (and no tombstone the cleaner removed before the segment
left), but may also see older versions of keys written again since. A compacted topic keeps its
whole log locally unless ``local.retention.*`` is set explicitly (without ``delete`` the
default "same as the total retention" is no limit, see
:attr:`streamd.log.topic_config.TopicConfig.local_retention_limits`); it is small by nature
(one record per key), and the archive then converges to exactly the compacted log, which is
what restore brings back.

The same units decide the local-deletion veto of a compacted tiered topic: a segment leaves
local disk only once it has been cleaned, holds no tombstone still waiting for its delete
horizon (the cleaner removes those later, and only from local segments) and its archived copy
is in sync, so the archive is never left holding what the cleaner would have removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from streamd.log.partition import PartitionLog
from streamd.log.segment import Segment
from streamd.tiering.manifest import PartitionManifest, SegmentMeta


class Compaction(Protocol):
    """What tiering needs to know of the log cleaner (:class:`streamd.log.compaction.cleaner.
    LogCleaner` is one)."""

    def cleaned_offset(self, plog: PartitionLog) -> int:
        """Offsets below it have been through the cleaner (0: none yet)."""
        ...

    def settled(self, plog: PartitionLog, segment: Segment) -> bool:
        """``segment`` holds no tombstone or marker still waiting for its delete horizon."""
        ...


class NoCleaner:
    """Without a cleaner nothing is cleaned: a compacted topic's segments never leave local
    disk (fail closed) and nothing is re-uploaded."""

    def cleaned_offset(self, plog: PartitionLog) -> int:
        return 0

    def settled(self, plog: PartitionLog, segment: Segment) -> bool:
        return False


class LocalSegment(Protocol):
    base_offset: int
    next_offset: int
    size: int
    readable_size: int
    sealed: bool


S = TypeVar("S", bound=LocalSegment)


@dataclass(frozen=True, slots=True)
class Unit(Generic[S]):
    """Local segments and archived entries covering the same offsets (``entries`` may end
    before ``segments`` when the unit reaches past the archive's end)."""

    segments: tuple[S, ...]
    entries: tuple[SegmentMeta, ...]

    @property
    def extends(self) -> bool:
        return self.segments[-1].next_offset - 1 > self.entries[-1].last_offset

    @property
    def in_sync(self) -> bool:
        local = sum(s.size for s in self.segments)
        return not self.extends and local == sum(e.size_bytes for e in self.entries)


def units(segments: Sequence[S], manifest: PartitionManifest) -> list[Unit[S]]:
    """Every unit of sealed, fully written local segments and archived entries, in offset
    order (see the module docstring). Local segments that start inside an entry, and entries
    whose local copy is gone, belong to no unit."""
    entries = manifest.segments
    local = [s for s in segments if s.sealed and s.size and s.readable_size >= s.size]
    found: list[Unit[S]] = []
    starts = {e.base_offset: n for n, e in enumerate(entries)}
    i = 0
    while i < len(local):
        j = starts.get(local[i].base_offset)
        if j is None:
            i += 1
            continue
        a, b = i, j
        local_end, entry_end = local[i].next_offset - 1, entries[j].last_offset
        complete = True
        while local_end != entry_end:
            if local_end < entry_end:
                i += 1
                if i == len(local) or local[i].base_offset != local_end + 1:
                    complete = False
                    break
                local_end = local[i].next_offset - 1
            elif j + 1 < len(entries) and entries[j + 1].base_offset == entry_end + 1:
                j += 1
                entry_end = entries[j].last_offset
            else:
                break  # the local side goes past the archive's end
        if complete:
            found.append(Unit(tuple(local[a : i + 1]), tuple(entries[b : j + 1])))
        i += 1
    return found


def stale_units(
    segments: Sequence[S], manifest: PartitionManifest, cleaned_below: int, high_watermark: int
) -> list[Unit[S]]:
    """The units to upload again: out of sync, every local segment of them cleaned
    (``next_offset <= cleaned_below``) and readable (below the high watermark)."""
    return [
        u
        for u in units(segments, manifest)
        if not u.in_sync
        and u.segments[-1].next_offset <= min(cleaned_below, high_watermark)
    ]


def may_leave_local_disk(
    segment: LocalSegment, segments: Sequence[S], manifest: PartitionManifest, cleaned_below: int
) -> bool:
    """The local-deletion veto of a compacted tiered partition: ``segment`` is archived, cleaned
    and its archived copy is in sync."""
    if manifest.last_uploaded_offset < segment.next_offset - 1:
        return False
    if segment.next_offset > cleaned_below:
        return False
    for unit in units(segments, manifest):
        if any(s is segment for s in unit.segments):
            return unit.in_sync
    return False
