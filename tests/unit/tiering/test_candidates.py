"""Stage 1 of the uploader: which segments are archived next (pure selection)."""

from __future__ import annotations

from dataclasses import dataclass

from streamd.log.txn_index import AbortedTxn
from streamd.tiering.candidates import select_candidates
from streamd.tiering.manifest import SegmentMeta, add_segment, empty_manifest

TOPIC_ID = "0123456789abcdef0123456789abcdef"


@dataclass
class Seg:
    base_offset: int
    next_offset: int
    size: int = 100
    readable_size: int = 100
    sealed: bool = True


def manifest_upto(last: int, start: int = 0):  # noqa: ANN201
    m = empty_manifest("t", TOPIC_ID, 0)
    if last < start:
        return m
    meta = SegmentMeta(
        base_offset=start,
        last_offset=last,
        size_bytes=1,
        first_timestamp=0,
        max_timestamp=0,
        record_count=last - start + 1,
        checksum="00000000",
        key="k.log",
        index_key="k.index",
        index_checksum="00000000",
        uploaded_at_ms=0,
    )
    return add_segment(m, meta)


def log(*bounds: int, active: int = 1) -> list[Seg]:
    """Sealed segments between consecutive bounds, then an unsealed active one."""
    segs = [Seg(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    segs.append(Seg(bounds[-1], bounds[-1] + active, sealed=False))
    return segs


def select(segs, manifest, hw: int, lso: int | None = None, aborted=()):  # noqa: ANN001, ANN201
    return select_candidates(
        segs, manifest, hw, last_stable_offset=hw if lso is None else lso, aborted=aborted
    )


def bases(selection) -> list[int]:  # noqa: ANN001
    return [s.base_offset for s in selection.candidates]


def test_empty_manifest_takes_every_sealed_durable_segment_in_order() -> None:
    sel = select(log(0, 10, 20, 30), empty_manifest("t", TOPIC_ID, 0), 31)
    assert bases(sel) == [0, 10, 20] and sel.blocked is None


def test_already_archived_segments_are_skipped() -> None:
    sel = select(log(0, 10, 20, 30), manifest_upto(19), 31)
    assert bases(sel) == [20]


def test_active_and_empty_segments_are_never_candidates() -> None:
    segs = log(0, 10, active=0)
    segs.insert(1, Seg(10, 10, size=0, readable_size=0))
    assert bases(select(segs, empty_manifest("t", TOPIC_ID, 0), 100)) == [0]


def test_stops_at_the_first_segment_not_fully_durable() -> None:
    segs = log(0, 10, 20, 30)
    assert bases(select(segs, empty_manifest("t", TOPIC_ID, 0), 25)) == [0, 10]
    segs[1].readable_size = 50  # deferred write not yet in the file (fsync "always")
    assert bases(select(segs, empty_manifest("t", TOPIC_ID, 0), 100)) == [0]


def test_first_segment_of_a_fresh_partition_may_start_anywhere() -> None:
    assert bases(select(log(40, 50, 60), empty_manifest("t", TOPIC_ID, 0), 61)) == [
        40,
        50,
    ]


def test_gap_after_the_manifest_blocks_and_says_why() -> None:
    sel = select(log(30, 40), manifest_upto(19), 41)
    assert sel.candidates == () and sel.blocked is not None and "gap" in sel.blocked


def test_overlap_with_the_manifest_blocks() -> None:
    sel = select(log(0, 15, 30), manifest_upto(19), 31)
    assert sel.candidates == () and sel.blocked is not None and "overlap" in sel.blocked


def test_manifest_emptied_by_retention_continues_at_its_end() -> None:
    from streamd.tiering.manifest import advance_remote_start

    emptied, _ = advance_remote_start(manifest_upto(9), 10)
    assert bases(select(log(0, 10, 20), emptied, 21)) == [10]


def test_after_delete_records_past_the_archive_uploads_resume_at_the_deleted_point() -> None:
    from streamd.tiering.manifest import delete_records_before

    m, _ = delete_records_before(manifest_upto(19), 45)
    sel = select(log(20, 40, 60, 80), m, 81)
    assert bases(sel) == [40, 60] and sel.blocked is None  # 20-39 is wholly deleted
    sel = select(log(50, 60), m, 61)
    assert sel.blocked is not None and "gap" in sel.blocked  # 45-49 missing locally


def test_only_segments_wholly_below_the_last_stable_offset_are_candidates() -> None:
    # An open transaction's first record is offset 15: 10-19 and later wait, not blocked.
    sel = select(log(0, 10, 20, 30), empty_manifest("t", TOPIC_ID, 0), 31, lso=15)
    assert bases(sel) == [0] and sel.waiting == 2 and sel.blocked is None
    sel = select(log(0, 10, 20, 30), empty_manifest("t", TOPIC_ID, 0), 31, lso=20)
    assert bases(sel) == [0, 10] and sel.waiting == 1
    sel = select(log(0, 10, 20, 30), manifest_upto(9), 31, lso=10)
    assert bases(sel) == [] and sel.waiting == 2


def test_the_last_stable_offset_never_exceeds_the_high_watermark() -> None:
    assert bases(select(log(0, 10, 20, 30), empty_manifest("t", TOPIC_ID, 0), 25, lso=31)) == [
        0, 10,
    ]


def test_selection_never_ends_between_an_aborted_transaction_and_its_marker() -> None:
    # Aborted transaction: records from 12, ABORT marker at 35 (in the active segment).
    abort = AbortedTxn(producer_id=7, first_offset=12, last_offset=35, last_stable_offset=36)
    segs = log(0, 10, 20, 30, active=10)
    sel = select(segs, empty_manifest("t", TOPIC_ID, 0), 40, aborted=[abort])
    assert bases(sel) == [0] and sel.waiting == 2
    assert sel.stable_end(10) and not sel.stable_end(20) and not sel.stable_end(35)
    assert sel.stable_end(36)
    # Once the marker's segment is sealed, everything goes, in one selection.
    segs = log(0, 10, 20, 30, 40)
    sel = select(segs, empty_manifest("t", TOPIC_ID, 0), 41, aborted=[abort])
    assert bases(sel) == [0, 10, 20, 30] and sel.waiting == 0
    # An abort whose marker is archived already does not matter.
    archived = AbortedTxn(producer_id=7, first_offset=2, last_offset=8, last_stable_offset=9)
    sel = select(log(0, 10, 20, 30), manifest_upto(9), 31, aborted=[archived])
    assert bases(sel) == [10, 20]
