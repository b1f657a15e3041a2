"""Transactions in the partition log: open transactions, markers, LSO, the aborted index."""

from pathlib import Path

import pytest

from streamd.errors import InvalidRecord
from streamd.log.batch import TRANSACTIONAL, parse_header
from streamd.log.control import ABORT, COMMIT, marker_batch, marker_type
from streamd.log.partition import PartitionLog
from streamd.log.producer_state import SNAPSHOT_FILE
from streamd.log.txn_index import AbortedTxn, decode_entries, encode_entries
from tests.unit.log.batches import simple_batch
from tests.unit.log.helpers import open_log

CONTROL = 0x20


def txn_batch(n: int, pid: int, seq: int, epoch: int = 0, value_size: int = 100) -> bytes:
    return simple_batch(
        n,
        value_size=value_size,
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        attributes=TRANSACTIONAL,
    )


def test_marker_batch_is_a_valid_control_batch() -> None:
    data = marker_batch(42, 3, True, 7, 1234)
    header = parse_header(data)
    assert header.attributes & CONTROL and header.attributes & TRANSACTIONAL
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (42, 3, -1)
    assert header.records_count == 1 and header.size == len(data)
    assert marker_type(data) == COMMIT
    assert marker_type(marker_batch(42, 3, False, 7, 1234)) == ABORT


def test_txn_index_bytes_round_trip_and_refuse_garbage() -> None:
    entries = [AbortedTxn(1, 0, 5, 6), AbortedTxn(2, 3, 9, 10)]
    assert decode_entries(encode_entries(entries)) == entries
    with pytest.raises(ValueError):
        decode_entries(encode_entries(entries)[:-1])
    with pytest.raises(ValueError):
        decode_entries(encode_entries(list(reversed(entries))))


async def test_clients_cannot_write_control_or_pid_less_transactional_batches(
    tmp_path: Path,
) -> None:
    plog = open_log(tmp_path)
    with pytest.raises(InvalidRecord):
        await plog.append(marker_batch(1, 0, True, 0, 1), now_ms=1)
    with pytest.raises(InvalidRecord):
        await plog.append(simple_batch(1, attributes=TRANSACTIONAL), now_ms=1)
    assert plog.log_end_offset == 0
    await plog.close()


async def test_open_transaction_holds_the_lso_until_its_marker(tmp_path: Path) -> None:
    plog = open_log(tmp_path, fsync="always")
    await plog.append(simple_batch(2), now_ms=1)
    await plog.append(txn_batch(3, pid=9, seq=0), now_ms=1)
    await plog.append(simple_batch(1), now_ms=1)
    assert (plog.high_watermark, plog.last_stable_offset) == (6, 2)
    await plog.append(txn_batch(2, pid=9, seq=3), now_ms=1)
    marker = await plog.append_marker(9, 0, True, now_ms=1)
    assert marker.base_offset == 8
    assert plog.last_stable_offset == plog.high_watermark == 9
    assert plog.aborted_transactions(0, 9) == []
    await plog.append(txn_batch(1, pid=9, seq=5), now_ms=1)  # same epoch, sequence continues
    assert plog.last_stable_offset == 9
    await plog.close()


async def test_abort_is_indexed_and_survives_a_clean_restart(tmp_path: Path) -> None:
    plog = open_log(tmp_path)
    await plog.append(txn_batch(2, pid=1, seq=0), now_ms=1)
    await plog.append(txn_batch(2, pid=2, seq=0), now_ms=1)
    await plog.append_marker(1, 0, False, now_ms=1)
    assert plog.last_stable_offset == 2  # pid 2 still open
    await plog.append_marker(2, 0, True, now_ms=1)
    expected = [AbortedTxn(1, 0, 4, 2)]
    assert plog.aborted_transactions(0, 6) == expected
    assert plog.aborted_transactions(5, 6) == []  # its marker lies below the fetch offset
    await plog.close()
    reopened = open_log(tmp_path)
    assert reopened.aborted_transactions(0, 6) == expected
    assert reopened.last_stable_offset == 6
    await reopened.close()


async def test_crash_rebuilds_open_transactions_and_the_index(tmp_path: Path) -> None:
    """No clean close, index file gone: the scan from the start rebuilds both."""
    plog = open_log(tmp_path, segment_bytes="1024")
    for i in range(6):
        await plog.append(txn_batch(1, pid=1, seq=i, value_size=400), now_ms=1)  # rolls
    await plog.append_marker(1, 0, False, now_ms=1)
    await plog.append(txn_batch(1, pid=3, seq=0), now_ms=1)  # left open
    assert len(plog.segments) > 2
    before = plog.aborted_transactions(0, plog.log_end_offset)
    plog.discard()  # kill -9: no snapshot, no clean marker
    for p in tmp_path.glob("*.txnindex"):
        p.unlink()
    (tmp_path / SNAPSHOT_FILE).unlink(missing_ok=True)
    again = open_log(tmp_path, segment_bytes="1024")
    assert again.aborted_transactions(0, again.log_end_offset) == before
    assert before and before[0].first_offset == 0
    assert again.last_stable_offset == 7
    assert list(tmp_path.glob("*.txnindex"))
    await again.close()


async def test_snapshot_at_roll_bounds_the_restart_scan(tmp_path: Path) -> None:
    plog = open_log(tmp_path, segment_bytes="1024")
    await plog.append(txn_batch(1, pid=5, seq=0), now_ms=1)
    for _ in range(8):
        await plog.append(simple_batch(1, value_size=300), now_ms=1)
    await plog.flush()
    assert plog._snapshot_task is not None  # written off the loop at each roll
    await plog._snapshot_task
    assert (tmp_path / SNAPSHOT_FILE).exists()  # written at a roll, not at close
    plog.discard()
    again = PartitionLog.open(tmp_path, plog.config)
    assert again.last_stable_offset == 0  # the open transaction came from the snapshot
    await again.append_marker(5, 0, False, now_ms=1)
    assert again.aborted_transactions(0, again.log_end_offset)[0].first_offset == 0
    await again.close()
