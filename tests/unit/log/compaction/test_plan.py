from streamd.log.compaction.keymap import KeyMap
from streamd.log.compaction.plan import (
    CompactionPolicy,
    SegmentInfo,
    cleanable,
    group_segments,
)

POLICY = CompactionPolicy(
    min_cleanable_dirty_ratio=0.5,
    min_compaction_lag_ms=0,
    max_compaction_lag_ms=2**63 - 1,
    delete_retention_ms=1000,
    segment_bytes=1000,
)


def _log(*sizes: int, durable: bool = True) -> list[SegmentInfo]:
    """Segments of 10 offsets each with the given sizes; the last one is active; segment i
    holds timestamps around 1000 * (i + 1)."""
    return [
        SegmentInfo(10 * i, 10 * (i + 1), size, 1000 * (i + 1), 1000 * (i + 1) + 500, durable)
        for i, size in enumerate(sizes)
    ]


def test_dirty_ratio_splits_at_the_checkpoint_and_stops_at_the_active_segment() -> None:
    segments = _log(100, 100, 100, 100, 50)
    found = cleanable(
        segments, log_start=0, checkpoint=20, stable_offset=50, policy=POLICY, now_ms=10**6
    )
    assert (found.first_dirty, found.first_uncleanable) == (20, 40)
    assert (found.clean_bytes, found.dirty_bytes) == (200, 200)
    assert found.dirty_ratio == 0.5 and not found.due(POLICY)
    found = cleanable(
        segments, log_start=0, checkpoint=10, stable_offset=50, policy=POLICY, now_ms=10**6
    )
    assert found.dirty_ratio == 0.75 and found.due(POLICY)


def test_a_checkpoint_outside_the_log_falls_back_to_the_log_start() -> None:
    segments = _log(100, 100, 100)
    for checkpoint in (None, 5, 999):
        found = cleanable(
            segments,
            log_start=10,
            checkpoint=checkpoint,
            stable_offset=30,
            policy=POLICY,
            now_ms=0,
        )
        assert found.first_dirty == 10


def test_stable_offset_lag_and_pending_writes_bound_the_cleanable_section() -> None:
    segments = _log(100, 100, 100, 100, 10)
    kw = {"log_start": 0, "checkpoint": 0, "policy": POLICY, "now_ms": 10_000}
    assert cleanable(segments, stable_offset=25, **kw).first_uncleanable == 20  # type: ignore[arg-type]
    lagged = CompactionPolicy(0.5, 7_000, 2**63 - 1, 1000, 1000)
    kw["policy"] = lagged
    assert cleanable(segments, stable_offset=50, **kw).first_uncleanable == 20  # type: ignore[arg-type]
    kw["policy"] = POLICY
    pending = [*segments[:2], SegmentInfo(20, 30, 100, 0, 0, durable=False), *segments[3:]]
    assert cleanable(pending, stable_offset=50, **kw).first_uncleanable == 20  # type: ignore[arg-type]


def test_max_compaction_lag_makes_a_partition_due_whatever_its_ratio() -> None:
    segments = _log(1000, 1000, 1000, 10, 1)
    policy = CompactionPolicy(0.99, 0, 5_000, 1000, 1000)
    found = cleanable(
        segments, log_start=0, checkpoint=30, stable_offset=50, policy=policy, now_ms=8_000
    )
    assert found.dirty_ratio < 0.99
    assert found.compaction_delay_ms == 0
    assert not found.due(policy)
    found = cleanable(
        segments, log_start=0, checkpoint=30, stable_offset=50, policy=policy, now_ms=10_000
    )
    assert found.compaction_delay_ms == 1_000 and found.due(policy)


def test_groups_stay_within_segment_bytes() -> None:
    segments = _log(400, 400, 300, 900, 50, 50)
    groups = group_segments(segments, 1000, 60)
    assert [[s.base_offset for s in g] for g in groups] == [[0, 10], [20], [30, 40, 50]]


def test_groups_keep_offsets_within_32_bits_of_their_base() -> None:
    segments = [SegmentInfo(0, 10, 10, 0, 0), SegmentInfo(10, 2**31 + 5, 10, 0, 0)]
    groups = group_segments(segments, 1000, 2**31 + 5)
    assert len(groups) == 2


def test_key_map_is_bounded_and_hashes_long_keys() -> None:
    keymap = KeyMap(memory_bytes=160 * 3)
    assert keymap.capacity == 3
    assert keymap.put(b"a", 1) and keymap.put(b"b", 2) and keymap.put(b"x" * 100, 3)
    assert not keymap.put(b"c", 4)
    assert keymap.put(b"a", 5), "updating a known key needs no room"
    assert keymap.get(b"a") == 5 and keymap.get(b"x" * 100) == 3 and keymap.get(b"c") == -1
    assert all(len(k) <= 16 for k in keymap.offsets)
    assert keymap.utilization == 1.0
