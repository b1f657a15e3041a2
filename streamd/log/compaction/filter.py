"""What a cleaning pass keeps, batch by batch (Kafka's ``LogCleaner.cleanInto`` rules), sans-IO.

Mapping (:func:`map_batch`): the dirty section is read in order; every keyed record of a
batch that is not a control batch and not part of an aborted transaction records its offset as
its key's latest. ``latest_offset`` then covers the mapped batches.

Filtering (:class:`BatchFilter`), for every batch of the segments being cleaned:

1. Batch retention. A data batch of an aborted transaction is discarded; a control batch is
   discarded once its transaction has no data left *and* its delete horizon has passed. A
   batch holding the last data offset of a producer that is still active (or the last marker of
   an active producer without data) is kept even when it becomes empty, so that producer's
   sequence and epoch survive; so is the batch that ends the cleaning round (Kafka), and the
   last batch of each cleaned group (streamd, see ``group_end``). Any other batch left without
   records is dropped.
2. Record retention. A record beyond the key map's ``latest_offset`` stays. A keyed record stays
   when no later offset of its key was mapped, except a tombstone whose batch's delete horizon
   has passed. A record without a key is dropped (Kafka counts it as invalid).
3. Output. A batch that keeps every record and needs no new delete horizon is written byte for
   byte. Otherwise it is rebuilt (:func:`streamd.log.compaction.records.rebuild_batch`); a
   batch that keeps a tombstone, or a discardable marker, gets a delete horizon of ``now +
   delete.retention.ms`` the first time (KIP-534), which is what makes tombstones stay exactly
   ``delete.retention.ms`` after they were first cleaned.

Offsets are never rewritten: a dropped record or batch leaves a gap.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from streamd.log.batch import CONTROL, DELETE_HORIZON, BatchHeader
from streamd.log.compaction.keymap import KeyMap, slot
from streamd.log.compaction.records import (
    Record,
    empty_batch,
    iter_records,
    rebuild_batch,
    records_section,
)
from streamd.log.compaction.txn import TxnTracker

_CONTROL_KEY = struct.Struct(">hh")


@dataclass(frozen=True, slots=True)
class ProducerTail:
    """What an active producer's last entry in the log is: the last offset of its last data
    batch, or None when its last entry is a marker (then its epoch identifies that marker)."""

    last_data_offset: int | None
    epoch: int


@dataclass(slots=True)
class FilterStats:
    batches_read: int = 0
    bytes_read: int = 0
    records_read: int = 0
    batches_written: int = 0
    bytes_written: int = 0
    records_written: int = 0
    keyless_dropped: int = 0
    tombstones_removed: int = 0
    markers_removed: int = 0
    next_horizon: int | None = None
    """The earliest delete horizon of a kept batch that still holds a tombstone or a marker:
    when a pass after it could remove something without any new data."""

    def merge(self, other: FilterStats) -> None:
        for name in (
            "batches_read",
            "bytes_read",
            "records_read",
            "batches_written",
            "bytes_written",
            "records_written",
            "keyless_dropped",
            "tombstones_removed",
            "markers_removed",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.note_horizon(other.next_horizon)

    def note_horizon(self, horizon: int | None) -> None:
        if horizon is not None and (self.next_horizon is None or horizon < self.next_horizon):
            self.next_horizon = horizon


def map_batch(
    keymap: KeyMap, txn: TxnTracker, batch: bytes | memoryview, header: BatchHeader, start: int
) -> bool:
    """Add one batch of the dirty section to the map; False when the map filled up first (the
    batch is then only partly mapped and ``latest_offset`` stays before it)."""
    if header.attributes & CONTROL:
        txn.on_control(header, _marker_kind(batch, header))
    elif not txn.on_data(header) and header.records_count:
        records = records_section(batch, header)
        base = header.base_offset
        put = keymap.put
        for record in iter_records(records, header.records_count):
            offset = base + record.offset_delta
            if record.key is not None and offset >= start and not put(record.key, offset):
                return False
    if header.last_offset >= start:
        keymap.latest_offset = max(keymap.latest_offset, header.last_offset)
    return True


def _marker_kind(batch: bytes | memoryview, header: BatchHeader) -> int | None:
    if not header.records_count:
        return None
    records = records_section(batch, header)
    for record in iter_records(records, 1):
        if record.key is not None and len(record.key) >= 4:
            return int(_CONTROL_KEY.unpack_from(record.key)[1])
    return -1


@dataclass
class BatchFilter:
    keymap: KeyMap
    txn: TxnTracker
    producers: dict[int, ProducerTail]
    round_end: int
    """The first offset this pass does not clean: the batch ending there is always kept."""
    now_ms: int
    delete_retention_ms: int
    stats: FilterStats = field(default_factory=FilterStats)
    group_end: int = -1
    """The end of the group being cleaned: the batch ending there is kept too (empty if need
    be), so a cleaned segment always ends where the next one begins (no trailing gap: archived
    segments stay contiguous, and time retention sees the group's last timestamp)."""

    def apply(self, batch: bytes | memoryview, header: BatchHeader) -> bytes | memoryview | None:
        """The bytes to write for ``batch`` (itself when unchanged), or None to drop it."""
        stats = self.stats
        stats.batches_read += 1
        stats.bytes_read += header.size
        stats.records_read += header.records_count
        control = bool(header.attributes & CONTROL)
        horizon = header.base_timestamp if header.attributes & DELETE_HORIZON else None
        if control:
            discardable = self.txn.on_control(header, _marker_kind(batch, header))
            discard_records = discardable and horizon is not None and horizon <= self.now_ms
        else:
            discardable = discard_records = self.txn.on_data(header)
        retain_empty = (
            (header.producer_id >= 0 and self._is_producer_tail(header))
            or header.next_offset == self.round_end
            or header.next_offset == self.group_end
        )
        if discard_records and not retain_empty:
            if control:
                stats.markers_removed += 1
            return None
        kept: list[Record] = []
        tombstones = False
        records = b""
        if not discard_records and header.records_count:
            records = records_section(batch, header)
            if control:
                kept = list(iter_records(records, header.records_count))
            else:
                kept, tombstones = self._keep(records, header, horizon)
        elif discard_records and control:
            stats.markers_removed += 1
        if kept:
            needs_horizon = (tombstones or (discardable and control)) and horizon is None
            if needs_horizon:
                stats.note_horizon(self.now_ms + self.delete_retention_ms)
            elif tombstones or (discardable and control):
                stats.note_horizon(horizon)
            if len(kept) == header.records_count and not needs_horizon:
                out: bytes | memoryview = batch
            else:
                new_horizon = self.now_ms + self.delete_retention_ms if needs_horizon else None
                out = rebuild_batch(batch, header, records, kept, new_horizon)
            stats.records_written += len(kept)
        elif retain_empty:
            out = batch if not header.records_count else empty_batch(header)
        else:
            return None
        stats.batches_written += 1
        stats.bytes_written += len(out)
        return out

    def _is_producer_tail(self, header: BatchHeader) -> bool:
        tail = self.producers.get(header.producer_id)
        if tail is None:
            return False
        if tail.last_data_offset is not None:
            return header.last_offset == tail.last_data_offset
        return bool(header.attributes & CONTROL) and header.producer_epoch == tail.epoch

    def _keep(
        self, records: bytes, header: BatchHeader, horizon: int | None
    ) -> tuple[list[Record], bool]:
        latest = self.keymap.latest_offset
        offsets = self.keymap.offsets
        base = header.base_offset
        drop_tombstones = horizon is not None and self.now_ms >= horizon
        kept = []
        tombstones = False
        for record in iter_records(records, header.records_count):
            offset = base + record.offset_delta
            if offset > latest:
                kept.append(record)
                tombstones = tombstones or record.tombstone
                continue
            key = record.key
            if key is None:
                self.stats.keyless_dropped += 1
                continue
            if offset < offsets.get(slot(key), -1):
                continue
            if record.tombstone:
                if drop_tombstones:
                    self.stats.tombstones_removed += 1
                    continue
                tombstones = True
            kept.append(record)
        return kept, tombstones
