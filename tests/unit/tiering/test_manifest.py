from __future__ import annotations

import dataclasses
import json

import pytest

from streamd.tiering import keys
from streamd.tiering.checksum import crc32c_hex
from streamd.tiering.manifest import (
    ManifestConflict,
    ManifestError,
    PartitionManifest,
    SegmentMeta,
    TopicManifest,
    UnsupportedManifestVersion,
    add_segment,
    advance_remote_start,
    delete_records_before,
    dump_partition_manifest,
    dump_topic_manifest,
    empty_manifest,
    load_partition_manifest,
    load_topic_manifest,
    new_incarnation,
    segment_for_offset,
    with_incarnation,
)

TID = "8d1f3c9e-6a0b-4c1e-9f3a-2b7d5e4a1c00"


def seg(
    base: int, last: int, *, checksum: str = "0badc0de", uploaded_at_ms: int = 1
) -> SegmentMeta:
    return SegmentMeta(
        base_offset=base,
        last_offset=last,
        size_bytes=(last - base + 1) * 100,
        first_timestamp=1_700_000_000_000 + base,
        max_timestamp=1_700_000_000_000 + last,
        record_count=last - base + 1,
        checksum=checksum,
        key=keys.segment_key("t", TID, 0, base, last, incarnation="0a1b2c3d"),
        index_key=keys.segment_index_key("t", TID, 0, base, last, incarnation="0a1b2c3d"),
        index_checksum="00c0ffee",
        uploaded_at_ms=uploaded_at_ms,
    )


def built(*ranges: tuple[int, int]) -> PartitionManifest:
    m = empty_manifest("t", TID, 0)
    for base, last in ranges:
        m = add_segment(m, seg(base, last))
    return m


def reseal(doc: dict) -> bytes:
    """Re-compute the checksum the way a writer would (to test checks behind it)."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps(dict(body, checksum=crc32c_hex(canonical))).encode()


def test_partition_manifest_round_trip() -> None:
    m = built((0, 9), (10, 19), (20, 29))
    m, _ = advance_remote_start(m, 5)
    data = dump_partition_manifest(m)
    assert load_partition_manifest(data) == m
    assert dump_partition_manifest(load_partition_manifest(data)) == data
    assert json.loads(data)["format_version"] == 2
    assert json.loads(data)["incarnation"] == m.incarnation != ""
    empty = empty_manifest("t", TID, 7)
    assert load_partition_manifest(dump_partition_manifest(empty)) == empty
    assert empty_manifest("t", TID, 7).incarnation != empty.incarnation, "a new history each time"


def test_version_1_manifests_are_read_and_continued_under_a_new_incarnation() -> None:
    """An archive written before incarnations existed stays readable; the partition continuing
    it gets an incarnation, and the next manifest it stores is version 2."""
    m = built((0, 9), (10, 19))
    doc = json.loads(dump_partition_manifest(m))
    doc["format_version"] = 1
    del doc["incarnation"]
    old = load_partition_manifest(reseal(doc))
    assert (old.format_version, old.incarnation) == (1, "")
    assert old.segments == m.segments
    assert json.loads(dump_partition_manifest(old))["format_version"] == 1
    continued = with_incarnation(old)
    assert continued.format_version == 2 and continued.incarnation
    assert continued.segments == old.segments
    assert with_incarnation(continued) is continued
    assert load_partition_manifest(dump_partition_manifest(continued)) == continued
    doc["incarnation"] = "0a1b2c3d"  # a version 1 document with a version 2 field
    with pytest.raises(ManifestError, match="unknown"):
        load_partition_manifest(reseal(doc))
    restored = new_incarnation(continued)
    assert restored.incarnation != continued.incarnation
    assert restored.segments == continued.segments


def test_topic_manifest_round_trip() -> None:
    tm = TopicManifest(
        topic="t", topic_id=TID, partition_count=6, configs={"retention.ms": "86400000"}
    )
    assert load_topic_manifest(dump_topic_manifest(tm)) == tm
    with pytest.raises(ManifestError, match="not a partition manifest"):
        load_partition_manifest(dump_topic_manifest(tm))


@pytest.mark.parametrize("version", [3, 0, "1", None, True])
def test_unknown_format_version_is_refused(version: object) -> None:
    doc = json.loads(dump_partition_manifest(built((0, 9))))
    doc["format_version"] = version
    with pytest.raises(UnsupportedManifestVersion, match="format_version"):
        load_partition_manifest(reseal(doc))
    tdoc = json.loads(
        dump_topic_manifest(TopicManifest(topic="t", topic_id=TID, partition_count=1))
    )
    tdoc["format_version"] = version
    with pytest.raises(UnsupportedManifestVersion):
        load_topic_manifest(reseal(tdoc))


def test_tampered_manifest_is_refused() -> None:
    data = dump_partition_manifest(built((0, 9), (10, 19)))
    doc = json.loads(data)
    doc["segments"][1]["last_offset"] = 18
    with pytest.raises(ManifestError, match="checksum mismatch"):
        load_partition_manifest(json.dumps(doc).encode())
    doc = json.loads(data)
    del doc["checksum"]
    with pytest.raises(ManifestError, match="checksum"):
        load_partition_manifest(json.dumps(doc).encode())
    with pytest.raises(ManifestError):
        load_partition_manifest(data[:-20])


def test_well_sealed_but_invalid_manifests_are_refused() -> None:
    good = json.loads(dump_partition_manifest(built((0, 9), (10, 19))))
    unknown = dict(good, surprise=1)
    with pytest.raises(ManifestError, match="unknown"):
        load_partition_manifest(reseal(unknown))
    gap = json.loads(json.dumps(good))
    gap["segments"][1]["base_offset"] = 11
    with pytest.raises(ManifestError, match="contiguous"):
        load_partition_manifest(reseal(gap))
    wrong_type = json.loads(json.dumps(good))
    wrong_type["segments"][0]["size_bytes"] = "900"
    with pytest.raises(ManifestError, match="size_bytes"):
        load_partition_manifest(reseal(wrong_type))
    bad_topic = dict(good, topic="../x")
    with pytest.raises(ManifestError):
        load_partition_manifest(reseal(bad_topic))


def test_first_segment_may_start_anywhere_and_sets_remote_start() -> None:
    m = add_segment(empty_manifest("t", TID, 0), seg(500, 599))
    assert (m.remote_start_offset, m.last_uploaded_offset) == (500, 599)
    assert m.next_offset == 600


def test_add_segment_requires_contiguity() -> None:
    m = built((0, 9))
    with pytest.raises(ManifestConflict, match="gap"):
        add_segment(m, seg(11, 19))
    with pytest.raises(ManifestConflict, match="overlap"):
        add_segment(m, seg(5, 19))
    with pytest.raises(ManifestConflict):
        add_segment(m, seg(0, 4))
    m2 = add_segment(m, seg(10, 19))
    assert [s.base_offset for s in m2.segments] == [0, 10]
    assert m.segments == (seg(0, 9),)  # the input is unchanged


def test_add_segment_is_idempotent_for_the_same_upload() -> None:
    m = built((0, 9), (10, 19))
    assert add_segment(m, seg(10, 19, uploaded_at_ms=999)) is m
    assert add_segment(m, seg(0, 9)) is m
    with pytest.raises(ManifestConflict):
        add_segment(m, seg(10, 19, checksum="deadbeef"))


def test_advance_remote_start() -> None:
    m = built((0, 9), (10, 19), (20, 29))
    same, removed = advance_remote_start(m, 0)
    assert same is m and removed == ()
    m1, removed = advance_remote_start(m, 15)
    assert m1.remote_start_offset == 15
    assert [s.base_offset for s in removed] == [0]
    assert [s.base_offset for s in m1.segments] == [10, 20]
    back, removed = advance_remote_start(m1, 3)
    assert back is m1 and removed == ()
    m2, removed = advance_remote_start(m1, 30)
    assert m2.segments == () and [s.base_offset for s in removed] == [10, 20]
    assert (m2.remote_start_offset, m2.last_uploaded_offset) == (30, 29)
    with pytest.raises(ManifestConflict, match="gap"):
        add_segment(m2, seg(40, 49))  # not a fresh partition any more
    m3 = add_segment(m2, seg(30, 39))
    assert m3.remote_start_offset == 30
    with pytest.raises(ManifestConflict):
        advance_remote_start(m, 31)
    assert load_partition_manifest(dump_partition_manifest(m2)) == m2


def test_segment_for_offset_edges() -> None:
    m = built((0, 9), (10, 10), (11, 29))
    m, _ = advance_remote_start(m, 3)
    expect = {
        -1: None,
        0: None,
        2: None,
        3: 0,
        9: 0,
        10: 10,
        11: 11,
        20: 11,
        29: 11,
        30: None,
        10**9: None,
    }
    for offset, base in expect.items():
        found = segment_for_offset(m, offset)
        assert (found.base_offset if found else None) == base, offset
    assert segment_for_offset(empty_manifest("t", TID, 0), 0) is None


def test_values_are_frozen_and_validated() -> None:
    m = built((0, 9))
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.remote_start_offset = 5  # type: ignore[misc]
    with pytest.raises(ValueError):
        seg(10, 9)
    with pytest.raises(ValueError):
        seg(0, 9, checksum="xyz")
    with pytest.raises(ManifestConflict):  # an empty manifest cannot start inside its archive
        PartitionManifest(
            topic="t", topic_id=TID, partition=0, remote_start_offset=3, last_uploaded_offset=9
        )
    with pytest.raises(UnsupportedManifestVersion):
        PartitionManifest(topic="t", topic_id=TID, partition=0, format_version=3)


def test_delete_records_inside_the_archive_moves_the_start_and_drops_whole_segments() -> None:
    m = built((0, 9), (10, 19), (20, 29))
    moved, removed = delete_records_before(m, 15)
    assert moved.remote_start_offset == 15 and [s.base_offset for s in removed] == [0]
    assert segment_for_offset(moved, 14) is None and segment_for_offset(moved, 15) is not None
    assert delete_records_before(moved, 12) == (moved, ())  # never backwards


def test_delete_records_beyond_the_archive_empties_it_and_the_next_upload_may_skip_ahead() -> None:
    m = built((0, 9), (10, 19))
    moved, removed = delete_records_before(m, 45)
    assert moved.segments == () and moved.remote_start_offset == 45 and len(removed) == 2
    assert load_partition_manifest(dump_partition_manifest(moved)) == moved
    # The local segment holding 45 starts at 40: offsets 20-39 were deleted, never archived.
    after = add_segment(moved, seg(40, 59))
    assert after.remote_start_offset == 45 and after.last_uploaded_offset == 59
    assert segment_for_offset(after, 44) is None and segment_for_offset(after, 45) is not None
    with pytest.raises(ManifestConflict):
        add_segment(moved, seg(46, 59))  # 45 itself would be missing: a real gap
    with pytest.raises(ManifestConflict):
        add_segment(moved, seg(20, 39))  # every record in it was deleted
