"""Restore plan building: the pure decisions of :mod:`streamd.tiering.restore`, no store."""

from __future__ import annotations

import uuid

import pytest

from streamd.tiering import keys
from streamd.tiering.manifest import PartitionManifest, SegmentMeta, TopicManifest, add_segment
from streamd.tiering.restore import (
    PartitionPlan,
    RestoreError,
    TopicPlan,
    TopicSource,
    merge_topic_manifest,
    plan_partition,
    select_offsets,
    select_topics,
)

TID = str(uuid.UUID(int=7))


def manifest(topic: str, partition: int, spans: list[tuple[int, int]], start: int | None = None,
             topic_id: str = TID) -> PartitionManifest:
    m = PartitionManifest(topic=topic, topic_id=topic_id, partition=partition)
    for base, last in spans:
        m = add_segment(
            m,
            SegmentMeta(
                base_offset=base, last_offset=last, size_bytes=100 * (last - base + 1),
                first_timestamp=0, max_timestamp=0, record_count=last - base + 1,
                checksum="0000abcd",
                key=keys.segment_key(
                    topic, topic_id, partition, base, last, incarnation="0a1b2c3d"
                ),
                index_key=keys.segment_index_key(
                    topic, topic_id, partition, base, last, incarnation="0a1b2c3d"
                ),
                index_checksum="0000abcd", uploaded_at_ms=1,
            ),
        )
    if start is not None:
        from streamd.tiering.manifest import advance_remote_start

        m, _ = advance_remote_start(m, start)
    return m


def full_listing(m: PartitionManifest) -> dict[str, int]:
    listing = {keys.partition_manifest_key(m.topic, m.topic_id, m.partition): 500}
    for s in m.segments:
        listing[s.key] = s.size_bytes
        listing[s.index_key] = 10
    return listing


METADATA = {
    "cluster_id": "c1",
    "topics": [
        {"name": "b", "topic_id": TID, "partitions": 2, "overrides": {"retention.ms": "1000"}},
        {"name": "a", "topic_id": str(uuid.UUID(int=8)), "partitions": 1, "overrides": {}},
    ],
}


def test_topics_come_from_the_cluster_metadata_sorted_by_name() -> None:
    sources = select_topics(METADATA, {})
    assert [s.name for s in sources] == ["a", "b"]
    b = sources[1]
    assert (b.topic_id, b.partition_count, b.overrides) == (TID, 2, {"retention.ms": "1000"})


def test_topic_filter_keeps_only_the_named_topics_and_rejects_unknown_ones() -> None:
    assert [s.name for s in select_topics(METADATA, {}, ["b"])] == ["b"]
    with pytest.raises(RestoreError, match=r"'nope' is not in the archive.*a, b"):
        select_topics(METADATA, {}, ["b", "nope"])


def test_without_cluster_metadata_topic_manifests_are_the_source() -> None:
    tm = TopicManifest(topic="t", topic_id=TID, partition_count=3, configs={"x": "1"})
    (source,) = select_topics(None, {"t": tm})
    assert (source.partition_count, source.overrides) == (3, {"x": "1"})
    assert "no cluster metadata" in source.notes[0]


def test_a_topic_manifest_with_more_partitions_adds_them() -> None:
    source = TopicSource(name="t", topic_id=TID, partition_count=2, overrides={})
    newer = TopicManifest(topic="t", topic_id=TID, partition_count=4)
    assert merge_topic_manifest(source, newer).partition_count == 4
    older = TopicManifest(topic="t", topic_id=TID, partition_count=1)
    assert merge_topic_manifest(source, older) is source
    other_id = TopicManifest(topic="t", topic_id=str(uuid.UUID(int=9)), partition_count=9)
    assert merge_topic_manifest(source, other_id) is source


def test_partition_starts_at_the_remote_start_and_continues_after_the_last_archived() -> None:
    m = manifest("t", 0, [(0, 99), (100, 249)], start=50)
    plan = plan_partition("t", 0, m, full_listing(m))
    assert (plan.start_offset, plan.next_offset, plan.segments) == (50, 250, 2)
    assert plan.gaps == ()
    assert plan.bucket_bytes == sum(full_listing(m).values())


def test_partition_without_manifest_starts_empty_at_zero() -> None:
    plan = plan_partition("t", 1, None, {})
    assert (plan.start_offset, plan.next_offset, plan.segments, plan.gaps) == (0, 0, 0, ())


def test_everything_expired_starts_at_the_next_offset() -> None:
    m = manifest("t", 0, [(0, 99)], start=100)
    assert not m.segments
    plan = plan_partition("t", 0, m, {})
    assert (plan.start_offset, plan.next_offset) == (100, 100)


def test_missing_or_truncated_objects_are_reported_as_offset_gaps() -> None:
    m = manifest("t", 0, [(0, 9), (10, 19), (20, 29), (30, 39)])
    listing = full_listing(m)
    del listing[m.segments[1].key]
    listing[m.segments[2].key] = 1
    del listing[m.segments[3].index_key]
    plan = plan_partition("t", 0, m, listing)
    assert [g.what for g in plan.gaps] == ["t-0 offsets 10-19", "t-0 offsets 20-29",
                                           "t-0 offsets 30-39"]
    assert "missing" in plan.gaps[0].why and "1 bytes" in plan.gaps[1].why
    assert "index object" in plan.gaps[2].why
    assert plan.next_offset == 40, "the rest is restored"


def topic_plan(name: str, ends: list[int]) -> TopicPlan:
    parts = tuple(
        PartitionPlan(topic=name, partition=i, manifest=manifest(name, i, [(0, e - 1)]) if e
                      else None)
        for i, e in enumerate(ends)
    )
    return TopicPlan(name=name, topic_id=TID, overrides={}, partitions=parts)


def entry(topic: str, partition: int, offset: int) -> dict[str, object]:
    return {"topic": topic, "partition": partition, "offset": offset, "leader_epoch": -1,
            "metadata": "", "commit_ts": 5}


def test_offsets_are_kept_for_restored_topics_only_and_overshoots_are_noted() -> None:
    doc = {
        "groups": {
            "g1": [entry("t", 0, 10), entry("t", 1, 50), entry("other", 0, 3)],
            "g2": [entry("other", 0, 1)],
            "g3": [entry("t", 5, 1)],
        }
    }
    offsets, notes = select_offsets(doc, [topic_plan("t", [20, 40])])
    assert offsets == {"g1": [entry("t", 0, 10), entry("t", 1, 50)]}
    whats = [n.what for n in notes]
    assert whats == ["group g1 at t-1 offset 50", "group g3 offset of t-5"]
    assert "records 40-49 were never archived" in notes[0].why


def test_no_offsets_document_means_no_offsets() -> None:
    assert select_offsets(None, [topic_plan("t", [1])]) == ({}, [])
