"""Compacted partitions for cleaner tests: keyed writes and a record-level read-back."""

from __future__ import annotations

from collections.abc import Sequence

from streamd.log.batch import check_batch
from streamd.log.compaction.records import iter_records, records_section
from streamd.log.partition import PartitionLog

from ..batches import build_batch

COMPACTED = {
    "cleanup.policy": "compact",
    "segment.bytes": "2048",
    "index.interval.bytes": "256",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "1000",
}


async def write(
    plog: PartitionLog,
    rows: Sequence[tuple[bytes, bytes | None]],
    *,
    per_batch: int = 5,
    ts: int = 1_000,
    now_ms: int = 1_000,
    compression: str | None = None,
) -> None:
    """Append ``rows`` (key, value or None for a tombstone), ``per_batch`` to a batch."""
    for i in range(0, len(rows), per_batch):
        chunk = rows[i : i + per_batch]
        records = [(k, v, [], ts + i + j) for j, (k, v) in enumerate(chunk)]
        await plog.append(build_batch(records, compression=compression), now_ms=now_ms)


def read_records(
    plog: PartitionLog, start: int = 0
) -> list[tuple[int, bytes | None, bytes | None]]:
    """(offset, key, value) of every record from ``start`` as a consumer would see them;
    every batch read must be valid."""
    out: list[tuple[int, bytes | None, bytes | None]] = []
    offset = max(start, plog.log_start_offset)
    while True:
        piece = plog.read(offset, 1 << 20)
        if piece is None:
            return out
        data = piece.read_bytes()
        pos = 0
        while pos < len(data):
            header = check_batch(data, pos, len(data), compacted=True)
            batch = data[pos : pos + header.size]
            if header.records_count:
                section = records_section(batch, header)
                for r in iter_records(section, header.records_count):
                    value = None if r.tombstone else _value(section, r.start)
                    out.append((header.base_offset + r.offset_delta, r.key, value))
            offset = header.next_offset
            pos += header.size


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _value(section: bytes, start: int) -> bytes:
    _, p = _varint(section, start)
    p += 1
    for _ in range(2):
        _, p = _varint(section, p)
    key_len, p = _varint(section, p)
    p += max(key_len, 0)
    value_len, p = _varint(section, p)
    return section[p : p + value_len]


def latest(rows: Sequence[tuple[bytes, bytes | None]]) -> dict[bytes, bytes]:
    """The state a key-value reader rebuilds: last value per key, tombstones delete."""
    state: dict[bytes, bytes] = {}
    for key, value in rows:
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state
