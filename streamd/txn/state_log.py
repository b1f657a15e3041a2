"""The transaction coordinator's state on disk: ``data_dir/transactions/state.log``.

An append-only file of records framed as ``length u32 BE | crc32c u32 BE | JSON payload``:

- ``{"k": "m", ...}``: the whole metadata of one transactional id after a transition (the
  last one wins; state ``Dead`` removes the id);
- ``{"k": "o", "id", "pid", "e", "g", "o": [[topic, partition, offset, leader epoch,
  metadata], ...]}``: offsets committed inside the id's ongoing transaction (TxnOffsetCommit).
  They count only if, where they stand in the file, that id's transaction (same producer id
  and epoch) is Ongoing; they are dropped by its next idle state, as the coordinator holds them.

Invariants (as :mod:`streamd.groups.offset_log`):
- a transition takes effect only after its record is written and, unless the caller says the
  record may ride on the next fsync, fsynced;
- loading stops at the first short or CRC-failing record (torn by a crash, never acknowledged)
  and truncates there;
- ``rewrite`` replaces the file with one record per live id (plus held offsets) via write-temp,
  fsync, rename, fsync directory.

All methods block; the service runs them in a worker thread.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c

from streamd.log.files import atomic_write, fsync_dir, write_fully
from streamd.txn.model import PendingOffset, TxnMetadata, TxnState

_HEADER = struct.Struct(">II")
FILE = "state.log"


@dataclass(frozen=True, slots=True)
class OffsetsRecord:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    offsets: tuple[PendingOffset, ...]


Record = TxnMetadata | OffsetsRecord


@dataclass
class Snapshot:
    txns: dict[str, TxnMetadata] = field(default_factory=dict)
    offsets: dict[str, list[PendingOffset]] = field(default_factory=dict)

    def apply(self, record: Record) -> None:
        if isinstance(record, OffsetsRecord):
            meta = self.txns.get(record.transactional_id)
            if (
                meta is not None
                and meta.state is TxnState.ONGOING
                and meta.producer_id == record.producer_id
                and meta.producer_epoch == record.producer_epoch
            ):
                held = self.offsets.setdefault(record.transactional_id, [])
                held.extend(record.offsets)
            return
        tid = record.transactional_id
        if record.state is TxnState.DEAD:
            self.txns.pop(tid, None)
        else:
            self.txns[tid] = record
        if record.state.idle or record.state is TxnState.DEAD:
            self.offsets.pop(tid, None)

    def records(self) -> list[Record]:
        out: list[Record] = []
        for tid, meta in self.txns.items():
            out.append(meta)
            held = self.offsets.get(tid)
            if held:
                out.append(OffsetsRecord(tid, meta.producer_id, meta.producer_epoch, tuple(held)))
        return out


def _to_json(record: Record) -> dict[str, Any]:
    if isinstance(record, OffsetsRecord):
        group = record.offsets[0].group_id if record.offsets else ""
        return {
            "k": "o",
            "id": record.transactional_id,
            "pid": record.producer_id,
            "e": record.producer_epoch,
            "g": group,
            "o": [[o.topic, o.partition, o.offset, o.leader_epoch, o.metadata]
                  for o in record.offsets],
        }
    m = record
    return {
        "k": "m",
        "id": m.transactional_id,
        "pid": m.producer_id,
        "e": m.producer_epoch,
        "le": m.last_producer_epoch,
        "ppid": m.previous_producer_id,
        "to": m.timeout_ms,
        "s": m.state.value,
        "p": sorted([t, p] for t, p in m.partitions),
        "g": sorted(m.groups),
        "st": m.start_ms,
        "u": m.update_ms,
    }


def _from_json(obj: dict[str, Any]) -> Record:
    if obj["k"] == "o":
        group = str(obj["g"])
        return OffsetsRecord(
            str(obj["id"]),
            int(obj["pid"]),
            int(obj["e"]),
            tuple(
                PendingOffset(group, str(t), int(p), int(o), int(le), str(md))
                for t, p, o, le, md in obj["o"]
            ),
        )
    if obj["k"] != "m":
        raise ValueError(f"unknown record kind {obj['k']!r}")
    return TxnMetadata(
        transactional_id=str(obj["id"]),
        producer_id=int(obj["pid"]),
        producer_epoch=int(obj["e"]),
        last_producer_epoch=int(obj["le"]),
        previous_producer_id=int(obj["ppid"]),
        timeout_ms=int(obj["to"]),
        state=TxnState(obj["s"]),
        partitions=frozenset((str(t), int(p)) for t, p in obj["p"]),
        groups=frozenset(str(g) for g in obj["g"]),
        start_ms=int(obj["st"]),
        update_ms=int(obj["u"]),
    )


def encode(record: Record) -> bytes:
    payload = json.dumps(_to_json(record), separators=(",", ":"), ensure_ascii=False).encode()
    return _HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


def decode_all(data: bytes) -> tuple[list[Record], int]:
    """Every valid record from the start of ``data`` and the length of that valid prefix."""
    records: list[Record] = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        size, crc = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + size
        if end > len(data):
            break
        payload = data[pos + _HEADER.size : end]
        if crc32c.crc32c(payload) != crc:
            break
        try:
            records.append(_from_json(json.loads(payload)))
        except (ValueError, KeyError, TypeError):
            break
        pos = end
    return records, pos


class TxnStateLog:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE
        self.records = 0
        """Records in the file now; compared with the live count to decide on a rewrite."""
        self._fd: int | None = None

    def load(self) -> Snapshot:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.joinpath(FILE + ".tmp").unlink(missing_ok=True)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        records, valid = decode_all(data)
        snapshot = Snapshot()
        for record in records:
            snapshot.apply(record)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if created:
            fsync_dir(self.directory)
        if valid < len(data):
            os.ftruncate(self._fd, valid)
            os.fsync(self._fd)
        self.records = len(records)
        return snapshot

    def append(self, records: Iterable[Record], *, sync: bool = True) -> None:
        """Write, and fsync unless ``sync`` is False (the next fsync then covers them)."""
        if self._fd is None:
            raise OSError("transaction state log is not open")
        batch = [encode(r) for r in records]
        data = memoryview(b"".join(batch))
        write_fully(self._fd, data)
        if sync:
            os.fsync(self._fd)
        self.records += len(batch)

    def needs_rewrite(self, live: int) -> bool:
        return self.records > max(1000, 4 * live)

    def rewrite(self, snapshot: Snapshot) -> None:
        records = snapshot.records()
        atomic_write(self.path, b"".join(encode(r) for r in records))
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.records = len(records)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

