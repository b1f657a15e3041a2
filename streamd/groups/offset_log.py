"""Committed offsets on disk: one append-only file, ``data_dir/groups/offsets.log``.

Each record is framed as ``length (u32 BE) | crc32c of payload (u32 BE) | payload`` where the
payload is a JSON object: ``{"g", "t", "p", "o", "e", "m", "ts"}`` (plus ``"x"``, the expire
timestamp, when the commit carried a retention time) for a commit, and
``{"g", "t", "p", "d": 1}`` for a tombstone (offset deleted or expired). The last record for a
(group, topic, partition) wins.

Invariants:
- A commit is acknowledged only after the records it produced are written and fsynced
  (callers batch concurrent commits into one ``append`` = one fsync).
- Loading stops at the first record that is short or fails its CRC (a write torn by a crash:
  it was never acknowledged) and truncates the file there, so later appends follow valid data.
- ``rewrite`` replaces the file with one record per live offset via write-temp, fsync, rename,
  fsync directory: a crash leaves the old file or the new one, never a mix.

All methods block; the asyncio adapter runs them in a worker thread.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import crc32c

from streamd.groups.model import OffsetInfo, OffsetRecord, TopicPartition
from streamd.log.files import atomic_write, fsync_dir, write_fully

_HEADER = struct.Struct(">II")
Snapshot = dict[str, dict[TopicPartition, OffsetInfo]]


def encode(record: OffsetRecord) -> bytes:
    obj: dict[str, object] = {"g": record.group_id, "t": record.topic, "p": record.partition}
    info = record.info
    if info is None:
        obj["d"] = 1
    else:
        obj.update(o=info.offset, e=info.leader_epoch, m=info.metadata, ts=info.commit_ts)
        if info.expire_ts >= 0:
            obj["x"] = info.expire_ts
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return _HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


def decode_all(data: bytes) -> tuple[list[OffsetRecord], int]:
    """Every valid record from the start of ``data`` and the length of that valid prefix."""
    records = []
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
            obj = json.loads(payload)
            info = None
            if not obj.get("d"):
                info = OffsetInfo(
                    int(obj["o"]),
                    int(obj["e"]),
                    str(obj["m"]),
                    int(obj["ts"]),
                    int(obj.get("x", -1)),
                )
            records.append(OffsetRecord(str(obj["g"]), str(obj["t"]), int(obj["p"]), info))
        except (ValueError, KeyError, TypeError):
            break
        pos = end
    return records, pos


def apply(snapshot: Snapshot, records: Iterable[OffsetRecord]) -> None:
    for r in records:
        if r.info is None:
            committed = snapshot.get(r.group_id)
            if committed is not None:
                committed.pop((r.topic, r.partition), None)
                if not committed:
                    del snapshot[r.group_id]
        else:
            snapshot.setdefault(r.group_id, {})[(r.topic, r.partition)] = r.info


class OffsetLog:
    FILE = "offsets.log"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.FILE
        self.records = 0
        """Records in the file now; compared with the live count to decide on a rewrite."""
        self._fd: int | None = None

    def load(self) -> Snapshot:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.joinpath(self.FILE + ".tmp").unlink(missing_ok=True)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        records, valid = decode_all(data)
        snapshot: Snapshot = {}
        apply(snapshot, records)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if created:
            fsync_dir(self.directory)
        if valid < len(data):
            os.ftruncate(self._fd, valid)
            os.fsync(self._fd)
        self.records = len(records)
        return snapshot

    def append(self, records: list[OffsetRecord]) -> None:
        """Write and fsync; returns only once the records are durable."""
        if self._fd is None:
            raise RuntimeError("offset log is not open")
        data = memoryview(b"".join(encode(r) for r in records))
        write_fully(self._fd, data)
        os.fsync(self._fd)
        self.records += len(records)

    def needs_rewrite(self, live: int) -> bool:
        return self.records > max(1000, 2 * live)

    def rewrite(self, snapshot: Snapshot) -> None:
        records = [
            OffsetRecord(g, t, p, info)
            for g, committed in snapshot.items()
            for (t, p), info in committed.items()
        ]
        atomic_write(self.path, b"".join(encode(r) for r in records))
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.records = len(records)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

