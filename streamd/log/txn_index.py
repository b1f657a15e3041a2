"""The aborted-transaction index of a segment: ``<base>.txnindex``, as Kafka's.

One 34-byte entry per ABORT marker that lies in the segment, in marker (offset) order::

    version i16 (0) | producer id i64 | first offset i64 | last offset i64 | last stable offset i64

``first offset`` is the first offset the aborted transaction wrote to this partition, ``last
offset`` the offset of its ABORT marker and ``last stable offset`` the partition's LSO right
after the marker was appended. A read_committed Fetch from offset ``f`` whose data ends before
``u`` must list every aborted transaction with ``last >= f`` and ``first < u``; their markers lie
in the segment holding ``f`` or a later one, and the scan can stop at the first entry whose
``last stable offset >= u``: every transaction that started below ``u`` had ended by then.

The file exists only for segments that hold an ABORT marker (most never do). It is derived
data: partition open regenerates the entries of every segment it scans from the producer-state
snapshot on (see :meth:`streamd.log.partition.PartitionLog._load_producer_state`), and the
same bytes travel to the bucket next to the archived segment (tiering).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamd.log.files import atomic_write

SUFFIX = ".txnindex"
_ENTRY = struct.Struct(">hqqqq")
ENTRY_SIZE = _ENTRY.size


@dataclass(frozen=True, slots=True)
class AbortedTxn:
    producer_id: int
    first_offset: int
    last_offset: int
    last_stable_offset: int


def encode_entries(entries: Iterable[AbortedTxn]) -> bytes:
    return b"".join(
        _ENTRY.pack(0, e.producer_id, e.first_offset, e.last_offset, e.last_stable_offset)
        for e in entries
    )


def decode_entries(data: bytes) -> list[AbortedTxn]:
    """Parse a whole index; ValueError when it is not a sequence of well-formed entries."""
    if len(data) % ENTRY_SIZE:
        raise ValueError(f"transaction index of {len(data)} bytes is not whole entries")
    entries = []
    previous = -1
    for version, pid, first, last, lso in _ENTRY.iter_unpack(data):
        if version != 0 or pid < 0 or not 0 <= first <= last or last <= previous:
            raise ValueError("malformed transaction index entry")
        entries.append(AbortedTxn(pid, first, last, lso))
        previous = last
    return entries


def collect(
    indexes: Iterable[Sequence[AbortedTxn]], fetch_offset: int, upper: int
) -> tuple[list[AbortedTxn], bool]:
    """Aborted transactions overlapping ``[fetch_offset, upper)`` from consecutive segments'
    entries, and whether the answer is complete (no later segment can add to it)."""
    found: list[AbortedTxn] = []
    for entries in indexes:
        for e in entries:
            if e.last_offset >= fetch_offset and e.first_offset < upper:
                found.append(e)
            if e.last_stable_offset >= upper:
                return found, True
    return found, False


class TxnIndex:
    """Entries of one segment in memory, appended to its file as markers arrive."""

    def __init__(self, path: Path, entries: list[AbortedTxn] | None = None) -> None:
        self.path = path
        self.entries: list[AbortedTxn] = entries or []

    @classmethod
    def load(cls, path: Path, base_offset: int, next_offset: int) -> TxnIndex | None:
        """The index stored at ``path`` (empty if there is none); None when it does not parse
        or names markers outside ``[base_offset, next_offset)``."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        try:
            entries = decode_entries(data)
        except ValueError:
            return None
        if entries and not (
            base_offset <= entries[0].last_offset and entries[-1].last_offset < next_offset
        ):
            return None
        return cls(path, entries)

    def append(self, entry: AbortedTxn) -> None:
        self.entries.append(entry)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, encode_entries([entry]))
        finally:
            os.close(fd)

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` entries (markers dropped before they were durable);
        cutting the file never needs free space."""
        if count >= len(self.entries):
            return
        self.entries = self.entries[:count]
        try:
            if count:
                os.truncate(self.path, count * ENTRY_SIZE)
            else:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def replace(self, entries: list[AbortedTxn]) -> None:
        """Make the file hold exactly ``entries`` (recovery's rebuild); no file when empty."""
        if entries == self.entries and (bool(entries) == self.path.exists()):
            return
        self.entries = list(entries)
        if entries:
            atomic_write(self.path, encode_entries(entries))
        else:
            self.path.unlink(missing_ok=True)

    def fsync(self) -> None:
        if not self.entries:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def to_bytes(self) -> bytes:
        return encode_entries(self.entries)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
