"""How the worker reads a Fetch answer as a read_committed consumer would: aborted
transactions and control batches are skipped, and a restart inside a batch skips the records
before its position. No sockets: ``parse_fetch`` is called on a stand-in worker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streamd.transforms.worker import Worker


def data_batch(base: int, values: list[bytes], pid: int = -1, txn: bool = False) -> bytes:
    b = DefaultRecordBatchBuilder(2, 0, int(txn), pid, 0 if pid >= 0 else -1,
                                  0 if pid >= 0 else -1, 1 << 20)
    for i, v in enumerate(values):
        b.append(i, 1_700_000_000_000, None, v, [])
    raw = bytearray(b.build())
    raw[0:8] = base.to_bytes(8, "big")
    return bytes(raw)


def marker(base: int, pid: int, commit: bool) -> bytes:
    """A control batch: key (version 0, type 1 commit / 0 abort), attributes bit 5 set."""
    b = DefaultRecordBatchBuilder(2, 0, 1, pid, 0, -1, 1 << 20)
    key = b"\x00\x00\x00" + bytes([int(commit)])
    b.append(0, 1_700_000_000_000, key, b"\x00" * 6, [])
    raw = bytearray(b.build())
    raw[0:8] = base.to_bytes(8, "big")
    attributes = int.from_bytes(raw[21:23], "big") | 0x20
    raw[21:23] = attributes.to_bytes(2, "big")
    import crc32c

    raw[17:21] = crc32c.crc32c(bytes(raw[21:])).to_bytes(4, "big")
    return bytes(raw)


def parse(records: bytes, position: int, aborted: list[tuple[int, int]]) -> tuple[Any, list[Any]]:
    me = SimpleNamespace(stable={}, fetch_positions={0: position}, reset_positions=None)
    partition = SimpleNamespace(
        partition_index=0, error_code=0, high_watermark=100, last_stable_offset=100,
        aborted_transactions=[SimpleNamespace(producer_id=p, first_offset=o) for p, o in aborted],
        records=records,
    )
    resp = SimpleNamespace(error_code=0, responses=[SimpleNamespace(partitions=[partition])])
    return me, Worker.parse_fetch(me, resp)  # type: ignore[arg-type]


def values(parsed: list[Any]) -> list[bytes]:
    return [r.value for _, items in parsed for batch, _ in items if batch is not None
            for r in batch]


def test_aborted_transactions_and_markers_are_skipped() -> None:
    records = (
        data_batch(0, [b"plain-0", b"plain-1"])
        + data_batch(2, [b"aborted-2", b"aborted-3"], pid=7, txn=True)
        + data_batch(4, [b"committed-4"], pid=8, txn=True)
        + marker(5, 7, commit=False)
        + marker(6, 8, commit=True)
        + data_batch(7, [b"aborted-again-7"], pid=7, txn=True)
        + marker(8, 7, commit=False)
        + data_batch(9, [b"plain-9"])
    )
    me, parsed = parse(records, 0, aborted=[(7, 2), (7, 7)])
    assert values(parsed) == [b"plain-0", b"plain-1", b"committed-4", b"plain-9"]
    assert me.fetch_positions[0] == 10 and me.stable[0] == 100
    assert parsed[0][1][-1][1] == 10  # the position after the last batch, markers included


def test_a_position_inside_a_batch_skips_the_records_before_it() -> None:
    me, parsed = parse(data_batch(10, [b"a", b"b", b"c", b"d"]), 12, aborted=[])
    assert values(parsed) == [b"c", b"d"]
    assert me.fetch_positions[0] == 14
