"""Idempotent-producer state of one partition: per producer id, its epoch and recent batches.

Kafka's rules, applied to each batch header that carries a producer id (>= 0):

- an epoch older than the producer's current one is fenced (INVALID_PRODUCER_EPOCH);
- a newer epoch starts over and must begin at sequence 0;
- a batch equal to one of the producer's last five batches (same first and last sequence) is a
  retry of an acknowledged write: it is answered with the original offsets and not appended;
- otherwise the first sequence must follow the last one (int32 wrap-around), or the batch is
  OUT_OF_ORDER_SEQUENCE_NUMBER;
- a producer id with no state here (new, or its batches were deleted) is accepted as is.

Transactions (KIP-98): the first transactional batch of a producer opens its transaction on this
partition (``ongoing[pid]`` = that batch's base offset) until the coordinator's marker ends it
(:meth:`end_txn`). The smallest open first offset bounds the last stable offset. Control batches
never enter the sequence history: a marker carries no sequence, and a marker with a newer epoch
(a fenced producer's abort) only raises the epoch.

State is derived from batch headers (plus the type of each marker), so it can be rebuilt by
scanning the log; a snapshot written on clean close and on segment roll bounds that scan.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from streamd.errors import ErrorCode, StreamdError
from streamd.log.batch import CONTROL, TRANSACTIONAL, BatchHeader
from streamd.log.files import atomic_write

SNAPSHOT_FILE = "producer-state.json"
KEEP_BATCHES = 5
INT32_MAX = 2**31 - 1


class OutOfOrderSequence(StreamdError):
    code = ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER


class InvalidProducerEpoch(StreamdError):
    code = ErrorCode.INVALID_PRODUCER_EPOCH


@dataclass(frozen=True, slots=True)
class BatchRecord:
    first_seq: int
    last_seq: int
    base_offset: int
    last_offset: int


@dataclass(slots=True)
class ProducerEntry:
    epoch: int
    batches: deque[BatchRecord] = field(default_factory=lambda: deque(maxlen=KEEP_BATCHES))

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq if self.batches else -1


def _last_seq(header: BatchHeader) -> int:
    return (header.base_sequence + header.last_offset_delta) % (INT32_MAX + 1)


class ProducerStateTable:
    def __init__(self) -> None:
        self.producers: dict[int, ProducerEntry] = {}
        self.scanned_to = 0
        """Log offset up to which batches have been applied."""
        self.ongoing: dict[int, int] = {}
        """Producer id -> first offset of its open transaction on this partition."""

    def check(self, header: BatchHeader) -> BatchRecord | None:
        """Validate an incoming batch. Returns the original batch when it is a duplicate."""
        pid = header.producer_id
        if pid < 0:
            return None
        entry = self.producers.get(pid)
        if entry is None:
            return None
        epoch = header.producer_epoch
        if epoch < entry.epoch:
            raise InvalidProducerEpoch(
                f"producer {pid} epoch {epoch} is fenced by epoch {entry.epoch}"
            )
        first, last = header.base_sequence, _last_seq(header)
        if epoch > entry.epoch:
            if first != 0:
                raise OutOfOrderSequence(
                    f"producer {pid} new epoch {epoch} must start at sequence 0, not {first}"
                )
            return None
        for batch in entry.batches:
            if batch.first_seq == first and batch.last_seq == last:
                return batch
        expected = (entry.last_seq + 1) % (INT32_MAX + 1) if entry.batches else first
        if first != expected:
            raise OutOfOrderSequence(
                f"producer {pid} epoch {epoch}: sequence {first}, expected {expected}"
            )
        return None

    def apply(self, header: BatchHeader) -> None:
        """Record an appended batch (header already carries its assigned base offset)."""
        self.scanned_to = max(self.scanned_to, header.next_offset)
        pid = header.producer_id
        if pid < 0:
            return
        entry = self.producers.get(pid)
        if entry is None or header.producer_epoch > entry.epoch:
            entry = self.producers[pid] = ProducerEntry(header.producer_epoch)
        if header.attributes & CONTROL:
            return
        if header.attributes & TRANSACTIONAL and pid not in self.ongoing:
            self.ongoing[pid] = header.base_offset
        entry.batches.append(
            BatchRecord(header.base_sequence, _last_seq(header), header.base_offset,
                        header.last_offset)
        )

    def end_txn(self, producer_id: int, marker_offset: int) -> tuple[int, int] | None:
        """Close the producer's open transaction at its marker: (first offset, last stable
        offset right after the marker), or None when it had none open here."""
        first = self.ongoing.pop(producer_id, None)
        if first is None:
            return None
        return first, min(self.ongoing.values(), default=marker_offset + 1)

    def first_unstable_offset(self) -> int | None:
        """First offset of the oldest open transaction (None: every transaction has ended)."""
        ongoing = self.ongoing
        return min(ongoing.values()) if ongoing else None

    def forget_below(self, offset: int) -> None:
        """Drop producers whose every remembered batch is below ``offset`` (deleted data)."""
        gone = [
            pid
            for pid, e in self.producers.items()
            if e.batches and e.batches[-1].last_offset < offset
        ]
        for pid in gone:
            del self.producers[pid]

    def truncate_to(self, offset: int) -> None:
        """Forget batches at or after ``offset`` (they were dropped before being acknowledged).
        A producer left with no batch is forgotten: its next batch is accepted as is, as after
        a restart that lost its state; the last sequence of one with batches left is correct
        again, so the producer's retries continue where the log ends."""
        for pid in list(self.producers):
            entry = self.producers[pid]
            while entry.batches and entry.batches[-1].base_offset >= offset:
                entry.batches.pop()
            if not entry.batches:
                del self.producers[pid]
        self.ongoing = {pid: first for pid, first in self.ongoing.items() if first < offset}
        self.scanned_to = min(self.scanned_to, offset)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": 1,
                "scanned_to": self.scanned_to,
                "producers": {
                    str(pid): {"epoch": e.epoch, "batches": [
                        [b.first_seq, b.last_seq, b.base_offset, b.last_offset] for b in e.batches
                    ]}
                    for pid, e in self.producers.items()
                },
                "ongoing": {str(pid): first for pid, first in self.ongoing.items()},
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ProducerStateTable:
        doc = json.loads(data)
        if doc.get("version") != 1:
            raise ValueError("unknown producer state version")
        table = cls()
        table.scanned_to = int(doc["scanned_to"])
        for pid, e in doc["producers"].items():
            entry = ProducerEntry(int(e["epoch"]))
            for first, last, base, last_off in e["batches"]:
                entry.batches.append(BatchRecord(first, last, base, last_off))
            table.producers[int(pid)] = entry
        table.ongoing = {int(pid): int(first) for pid, first in doc.get("ongoing", {}).items()}
        return table

    def save(self, directory: Path) -> None:
        atomic_write(directory / SNAPSHOT_FILE, self.to_json())

    @classmethod
    def load(cls, directory: Path) -> ProducerStateTable:
        path = directory / SNAPSHOT_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls()
        try:
            return cls.from_json(data)
        except (ValueError, KeyError, TypeError):
            os.unlink(path)
            return cls()
