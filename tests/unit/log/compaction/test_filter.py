"""The cleaning rules, sans-IO: batches in, batches out (see streamd.log.compaction.filter)."""

import struct
from collections.abc import Sequence

from streamd.log.batch import CONTROL, DELETE_HORIZON, TRANSACTIONAL, check_batch, parse_header
from streamd.log.compaction.filter import BatchFilter, ProducerTail, map_batch
from streamd.log.compaction.keymap import KeyMap
from streamd.log.compaction.records import iter_records, records_section
from streamd.log.compaction.txn import ABORT, COMMIT, AbortedTxn, TxnTracker

from ..batches import build_batch

Row = tuple[bytes | None, bytes | None]


def batch(offset: int, rows: Sequence[Row], **kw: object) -> bytes:
    return build_batch(
        [(k, v, [], 1000 + offset + i) for i, (k, v) in enumerate(rows)],
        base_offset=offset,
        **kw,  # type: ignore[arg-type]
    )


def marker(offset: int, pid: int, kind: int, epoch: int = 0) -> bytes:
    key = struct.pack(">hh", 0, kind)
    return build_batch(
        [(key, struct.pack(">hi", 0, 0), [], 5000 + offset)],
        base_offset=offset,
        producer_id=pid,
        producer_epoch=epoch,
        attributes=CONTROL | TRANSACTIONAL,
    )


def txn_batch(offset: int, pid: int, rows: Sequence[Row]) -> bytes:
    return batch(
        offset, rows, producer_id=pid, producer_epoch=0, base_sequence=0, attributes=TRANSACTIONAL
    )


def clean(
    log: list[bytes],
    *,
    first_dirty: int = 0,
    now: int = 10_000,
    retention: int = 1_000,
    round_end: int | None = None,
    producers: dict[int, ProducerTail] | None = None,
    aborted: Sequence[AbortedTxn] = (),
    map_bytes: int = 1 << 20,
) -> list[bytes]:
    """One pass: map every batch from ``first_dirty``, then filter the whole log."""
    headers = [parse_header(b) for b in log]
    end = round_end if round_end is not None else headers[-1].next_offset
    keymap = KeyMap(map_bytes)
    keymap.latest_offset = first_dirty - 1
    txn = TxnTracker()
    txn.add_aborted(aborted)
    for data, header in zip(log, headers, strict=True):
        if header.last_offset >= first_dirty:
            assert map_batch(keymap, txn, data, header, first_dirty)
    keymap.latest_offset = max(keymap.latest_offset, end - 1)
    txn = TxnTracker()
    txn.add_aborted(aborted)
    filt = BatchFilter(keymap, txn, producers or {}, end, now, retention)
    out = []
    for data, header in zip(log, headers, strict=True):
        kept = filt.apply(data, header)
        if kept is not None:
            out.append(bytes(kept))
    return out


def view(log: list[bytes]) -> list[tuple[int, int, list[Row]]]:
    """(base offset, last offset, [(key, value)]) of every batch, checking each is valid."""
    out = []
    for data in log:
        header = check_batch(data, 0, len(data), compacted=True)
        rows: list[Row] = []
        if header.records_count:
            section = records_section(data, header)
            for r in iter_records(section, header.records_count):
                value = None if r.tombstone else b"?"
                rows.append((r.key, value))
        out.append((header.base_offset, header.last_offset, rows))
    return out


def test_only_the_latest_record_of_each_key_stays_and_offsets_keep_their_gaps() -> None:
    log = [
        batch(0, [(b"a", b"1"), (b"b", b"1")]),
        batch(2, [(b"a", b"2")]),
        batch(3, [(b"c", b"1"), (b"b", b"2"), (b"c", b"2")]),
        batch(6, [(b"d", b"1")]),
    ]
    out = clean(log)
    assert view(out) == [
        (2, 2, [(b"a", b"?")]),
        (3, 5, [(b"b", b"?"), (b"c", b"?")]),
        (6, 6, [(b"d", b"?")]),
    ]
    assert out[0] == log[1] and out[2] == log[3], "untouched batches are copied byte for byte"


def test_records_beyond_the_mapped_range_stay() -> None:
    log = [batch(0, [(b"a", b"1")]), batch(1, [(b"a", b"2")]), batch(2, [(b"a", b"3")])]
    headers = [parse_header(b) for b in log]
    keymap = KeyMap(1 << 20)
    txn = TxnTracker()
    for data, header in zip(log[:2], headers[:2], strict=True):
        map_batch(keymap, txn, data, header, 0)
    filt = BatchFilter(keymap, TxnTracker(), {}, 3, 10_000, 1000)
    out = [filt.apply(d, h) for d, h in zip(log, headers, strict=True)]
    assert [o is not None for o in out] == [False, True, True]


def test_a_tombstone_stays_for_delete_retention_ms_after_its_first_cleaning() -> None:
    log = [
        batch(0, [(b"a", b"1"), (b"b", b"1")]),
        batch(2, [(b"a", None)]),
        batch(3, [(b"b", b"2")]),
    ]
    first = clean(log, now=10_000, retention=1_000)
    assert view(first) == [(2, 2, [(b"a", None)]), (3, 3, [(b"b", b"?")])]
    tomb = parse_header(first[0])
    assert tomb.attributes & DELETE_HORIZON and tomb.base_timestamp == 11_000
    again = clean(first, first_dirty=4, now=10_999, round_end=4)
    assert view(again) == view(first) and again[0] == first[0]
    gone = clean(first, first_dirty=4, now=11_000, round_end=4)
    assert view(gone) == [(3, 3, [(b"b", b"?")])]


def test_a_keyed_record_without_key_is_dropped() -> None:
    log = [batch(0, [(None, b"1"), (b"a", b"1")]), batch(2, [(b"b", b"1")])]
    assert view(clean(log)) == [(0, 1, [(b"a", b"?")]), (2, 2, [(b"b", b"?")])]


def test_the_last_batch_of_an_active_producer_and_of_the_round_stay_even_when_empty() -> None:
    log = [
        batch(0, [(b"a", b"1")], producer_id=5, producer_epoch=2, base_sequence=10),
        batch(1, [(b"b", b"1")]),
        batch(2, [(b"a", b"2"), (b"b", b"2")]),
        batch(4, [(b"c", b"1")]),
    ]
    out = clean(log, producers={5: ProducerTail(0, 2)}, round_end=4)
    headers = [check_batch(o, 0, len(o), compacted=True) for o in out]
    assert [(h.base_offset, h.records_count) for h in headers] == [(0, 0), (2, 2), (4, 1)]
    assert (headers[0].producer_id, headers[0].producer_epoch, headers[0].base_sequence) == (
        5,
        2,
        10,
    )
    ends_aborted = [batch(0, [(b"a", b"1")]), txn_batch(1, 7, [(b"b", b"x")])]
    out = clean(ends_aborted, aborted=[AbortedTxn(7, 1, 5, 6)], round_end=2)
    assert [(h.base_offset, h.records_count) for h in map(parse_header, out)] == [(0, 1), (1, 0)]


def test_aborted_transactions_are_removed_and_their_marker_outlives_them() -> None:
    log = [
        txn_batch(0, 7, [(b"a", b"aborted")]),
        batch(1, [(b"b", b"1")]),
        marker(2, 7, ABORT),
        batch(3, [(b"c", b"1")]),
    ]
    aborted = [AbortedTxn(7, 0, 2, 3)]
    first = clean(log, aborted=aborted)
    assert view(first) == [
        (1, 1, [(b"b", b"?")]),
        (2, 2, [(b"\x00\x00\x00\x00", b"?")]),
        (3, 3, [(b"c", b"?")]),
    ]
    assert not parse_header(first[1]).attributes & DELETE_HORIZON
    second = clean(first, first_dirty=4, now=20_000, aborted=aborted, round_end=4)
    assert parse_header(second[1]).attributes & DELETE_HORIZON, "no data left: horizon set"
    assert parse_header(second[1]).base_timestamp == 21_000
    third = clean(second, first_dirty=4, now=21_000, aborted=aborted, round_end=4)
    assert [parse_header(b).base_offset for b in third] == [1, 3]


def test_a_commit_marker_stays_while_its_transaction_has_data() -> None:
    log = [
        txn_batch(0, 8, [(b"a", b"1")]),
        marker(1, 8, COMMIT),
        batch(2, [(b"z", b"1")]),
    ]
    first = clean(log)
    assert [parse_header(b).base_offset for b in first] == [0, 1, 2]
    assert not parse_header(first[1]).attributes & DELETE_HORIZON
    superseded = [*first, batch(3, [(b"a", b"2")]), batch(4, [(b"y", b"1")])]
    second = clean(superseded, first_dirty=3, now=20_000)
    assert [parse_header(b).base_offset for b in second] == [1, 2, 3, 4]
    assert not parse_header(second[0]).attributes & DELETE_HORIZON, "its data was seen"
    third = clean(second, first_dirty=5, now=30_000, round_end=5)
    assert parse_header(third[0]).attributes & DELETE_HORIZON, "no data left: horizon set"
    fourth = clean(third, first_dirty=5, now=31_000, round_end=5)
    assert [parse_header(b).base_offset for b in fourth] == [2, 3, 4]


def test_the_last_marker_of_an_active_producer_stays_as_an_empty_batch() -> None:
    log = [marker(0, 9, COMMIT, epoch=4), batch(1, [(b"x", b"1")])]
    first = clean(log, producers={9: ProducerTail(None, 4)}, now=10_000)
    later = clean(
        first, first_dirty=2, now=20_000, producers={9: ProducerTail(None, 4)}, round_end=2
    )
    header = parse_header(later[0])
    assert (header.base_offset, header.records_count, header.producer_epoch) == (0, 0, 4)
