"""Which partition to clean, and which offsets (Kafka's ``LogCleanerManager`` rules), sans-IO.

A compacted log is split at two offsets::

    [log start ........ first dirty) [first dirty ..... first uncleanable) [uncleanable ...)
         clean: cleaned before            dirty: cleanable now              not yet

- ``first dirty`` is the cleaner checkpoint (where the last pass stopped); it falls back to
  the log start when missing or outside the log.
- ``first uncleanable`` is the base of the segment holding the lowest of: the active segment's
  base (never cleaned), the last stable offset (open transactions; the high watermark without
  them), the first segment not yet fully written, and, with ``min.compaction.lag.ms``, the first
  dirty segment holding a record newer than the lag.

The dirty ratio is ``dirty bytes / (clean bytes + dirty bytes)`` over whole segments. A
partition is cleaned when its ratio exceeds ``min.cleanable.dirty.ratio``, or when
``max.compaction.lag.ms`` has passed for its oldest dirty record and it has dirty bytes (then it
goes first). Among those the dirtiest goes first. Beyond Kafka 3.9: a partition with nothing
dirty whose kept tombstones or markers have reached their delete horizon is cleaned too (when
nothing else is due), so tombstones disappear ``delete.retention.ms`` after their first cleaning
even on a topic that receives no more writes.

Segments are cleaned in groups whose original sizes add up to at most ``segment.bytes`` (and
whose offsets fit the index's 32-bit deltas), so repeated passes merge small cleaned segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_RELATIVE_OFFSET = 2**31 - 1


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    base_offset: int
    end_offset: int
    """The next segment's base offset (the log end for the active segment)."""
    size: int
    first_timestamp: int
    max_timestamp: int
    durable: bool = True
    """Every byte is in the file (no deferred write is pending)."""


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    min_cleanable_dirty_ratio: float
    min_compaction_lag_ms: int
    max_compaction_lag_ms: int
    delete_retention_ms: int
    segment_bytes: int


@dataclass(frozen=True, slots=True)
class Cleanable:
    first_dirty: int
    first_uncleanable: int
    clean_bytes: int
    dirty_bytes: int
    compaction_delay_ms: int
    """How long past ``max.compaction.lag.ms`` the oldest dirty record is (0: not past)."""

    @property
    def dirty_ratio(self) -> float:
        total = self.clean_bytes + self.dirty_bytes
        return self.dirty_bytes / total if total else 0.0

    def due(self, policy: CompactionPolicy) -> bool:
        if self.compaction_delay_ms > 0 and self.dirty_bytes > 0:
            return True
        return self.dirty_ratio > policy.min_cleanable_dirty_ratio


def cleanable(
    segments: Sequence[SegmentInfo],
    *,
    log_start: int,
    checkpoint: int | None,
    stable_offset: int,
    policy: CompactionPolicy,
    now_ms: int,
) -> Cleanable:
    """The dirty section of a log (``segments`` in order, the last one active)."""
    active = segments[-1]
    first_dirty = checkpoint
    if first_dirty is None or not log_start <= first_dirty <= active.end_offset:
        first_dirty = log_start
    bound = min(active.base_offset, stable_offset)
    dirty_sealed = [s for s in segments[:-1] if s.end_offset > first_dirty]
    for segment in dirty_sealed:
        if not segment.durable:
            bound = min(bound, segment.base_offset)
            break
    if policy.min_compaction_lag_ms > 0:
        newest_allowed = now_ms - policy.min_compaction_lag_ms
        for segment in dirty_sealed:
            if segment.max_timestamp > newest_allowed:
                bound = min(bound, segment.base_offset)
                break
    first_uncleanable = _segment_base(segments, bound)
    clean_bytes = sum(s.size for s in segments if s.base_offset < first_dirty)
    low = min(first_dirty, first_uncleanable)
    dirty_bytes = sum(
        s.size for s in segments if s.base_offset < first_uncleanable and s.end_offset > low
    )
    delay = 0
    if policy.max_compaction_lag_ms > 0:
        firsts = [s.first_timestamp for s in dirty_sealed if s.first_timestamp > 0]
        if firsts:
            delay = max(0, now_ms - policy.max_compaction_lag_ms - min(firsts))
    return Cleanable(first_dirty, first_uncleanable, clean_bytes, dirty_bytes, delay)


def _segment_base(segments: Sequence[SegmentInfo], offset: int) -> int:
    for segment in segments:
        if segment.base_offset <= offset < segment.end_offset:
            return segment.base_offset
    return segments[-1].base_offset if offset >= segments[-1].base_offset else offset


def group_segments(
    segments: Sequence[SegmentInfo], max_bytes: int, first_uncleanable: int
) -> list[list[SegmentInfo]]:
    """Consecutive ``segments`` (all to be cleaned) in groups of at most ``max_bytes`` of
    original data whose offsets stay within 2**31 of the group's base."""
    groups: list[list[SegmentInfo]] = []
    rest = list(segments)
    while rest:
        group = [rest.pop(0)]
        size = group[0].size
        while rest:
            candidate = rest[0]
            last = (rest[1].base_offset if len(rest) > 1 else first_uncleanable) - 1
            if size + candidate.size > max_bytes:
                break
            if candidate.size and last - group[0].base_offset > MAX_RELATIVE_OFFSET:
                break
            group.append(rest.pop(0))
            size += candidate.size
        groups.append(group)
    return groups
