import pytest

from streamd.errors import CorruptMessage
from streamd.log.batch import (
    CONTROL,
    DELETE_HORIZON,
    TRANSACTIONAL,
    check_batch,
    iter_record_timestamps,
    parse_header,
    validate_produce_batches,
)
from streamd.log.compaction.records import (
    empty_batch,
    first_keyless_record,
    iter_records,
    rebuild_batch,
    records_section,
)

from ..batches import build_batch

CODECS = [None, "gzip", "snappy", "lz4", "zstd"]


def _batch(compression: str | None = None, **kw: object) -> bytes:
    records = [
        (b"a", b"1", [], 1_000),
        (b"b", None, [], 1_005),
        (None, b"3", [("h", b"x")], 1_002),
        (b"a" * 40, b"4", [], 1_009),
    ]
    return build_batch(records, base_offset=100, compression=compression, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", CODECS)
def test_records_are_decoded_once_with_keys_tombstones_and_deltas(codec: str | None) -> None:
    batch = _batch(codec)
    header = parse_header(batch)
    records = list(iter_records(records_section(batch, header), header.records_count))
    assert [r.key for r in records] == [b"a", b"b", None, b"a" * 40]
    assert [r.tombstone for r in records] == [False, True, False, False]
    assert [r.offset_delta for r in records] == [0, 1, 2, 3]
    assert [header.base_timestamp + r.timestamp_delta for r in records] == [1000, 1005, 1002, 1009]


@pytest.mark.parametrize("codec", CODECS)
def test_a_rebuilt_batch_keeps_offsets_producer_fields_and_record_timestamps(
    codec: str | None,
) -> None:
    batch = _batch(codec, producer_id=7, producer_epoch=3, base_sequence=40)
    header = parse_header(batch)
    section = records_section(batch, header)
    records = list(iter_records(section, header.records_count))
    out = rebuild_batch(batch, header, section, [records[1], records[2]], None)
    new = check_batch(out, 0, len(out), compacted=True)
    assert (new.base_offset, new.last_offset, new.records_count) == (100, 103, 2)
    assert (new.producer_id, new.producer_epoch, new.base_sequence) == (7, 3, 40)
    assert new.compression == header.compression
    assert new.max_timestamp == 1005
    assert list(iter_record_timestamps(out)) == [(101, 1005), (102, 1002)]


def test_setting_a_delete_horizon_reencodes_timestamp_deltas() -> None:
    batch = _batch("lz4")
    header = parse_header(batch)
    section = records_section(batch, header)
    records = list(iter_records(section, header.records_count))
    out = rebuild_batch(batch, header, section, records[:2], 999_999)
    new = check_batch(out, 0, len(out), compacted=True)
    assert new.attributes & DELETE_HORIZON
    assert new.base_timestamp == 999_999
    assert new.first_timestamp == new.max_timestamp == 1005
    assert list(iter_record_timestamps(out)) == [(100, 1000), (101, 1005)]
    again = list(iter_records(records_section(out, new), new.records_count))
    assert [r.key for r in again] == [b"a", b"b"] and again[1].tombstone


def test_an_empty_batch_is_a_valid_header_keeping_the_offset_range() -> None:
    batch = _batch(
        "gzip", producer_id=9, producer_epoch=1, base_sequence=5, attributes=TRANSACTIONAL
    )
    header = parse_header(batch)
    out = empty_batch(header)
    new = check_batch(out, 0, len(out), compacted=True)
    assert len(out) == 61 and new.records_count == 0 and new.compression == 0
    assert (new.base_offset, new.last_offset) == (100, 103)
    assert (new.producer_id, new.producer_epoch, new.base_sequence) == (9, 1, 5)
    assert new.attributes & TRANSACTIONAL
    assert new.base_timestamp == new.max_timestamp == header.max_timestamp


@pytest.mark.parametrize("codec", CODECS)
def test_first_keyless_record_counts_across_batches(codec: str | None) -> None:
    keyed = build_batch([(b"k", b"v", [], 1), (b"j", b"w", [], 2)], compression=codec)
    payload = keyed + _batch(codec)
    headers = validate_produce_batches(payload, 1 << 20)
    assert first_keyless_record(payload, headers) == 4
    assert first_keyless_record(keyed, validate_produce_batches(keyed, 1 << 20)) is None


def test_control_batches_are_not_checked_for_keys() -> None:
    control = build_batch([(None, b"x", [], 1)], attributes=CONTROL | TRANSACTIONAL)
    headers = [parse_header(control)]
    assert first_keyless_record(control, headers) is None


def test_a_record_overrunning_its_batch_is_corrupt() -> None:
    batch = bytearray(_batch())
    header = parse_header(batch)
    section = records_section(batch, header)
    with pytest.raises(CorruptMessage):
        list(iter_records(section[:-3], header.records_count))
