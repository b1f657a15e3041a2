"""Committed offsets in the coordinator: validation, fetch, delete, expiry."""

from __future__ import annotations

from streamd.errors import ErrorCode as E
from streamd.groups.coordinator import CommitOffset
from streamd.groups.model import OFFSET_METADATA_TOO_LARGE, OffsetInfo, OffsetRecord

from .helpers import Harness, subscription
from .test_coordinator import form_group

DAY = 24 * 3600 * 1000


def test_simple_commit_creates_empty_group_and_fetch() -> None:
    h = Harness()
    codes, records = h.c.commit(
        "simple",
        -1,
        "",
        None,
        [CommitOffset("t", 0, 42, 3, "meta"), CommitOffset("t", 1, 7, -1, None)],
        h.now,
    )
    assert codes == [E.NONE, E.NONE]
    assert records == [
        OffsetRecord("simple", "t", 0, OffsetInfo(42, 3, "meta", h.now)),
        OffsetRecord("simple", "t", 1, OffsetInfo(7, -1, "", h.now)),
    ]
    assert h.c.fetch("simple", [("t", 0), ("t", 9)]) == {
        ("t", 0): OffsetInfo(42, 3, "meta", h.now),
        ("t", 9): None,
    }
    assert list(h.c.fetch("simple", None)) == [("t", 0), ("t", 1)]
    assert h.c.fetch("unknown", None) == {}
    assert h.c.list_groups() == [("simple", "", "Empty")]


def test_commit_to_unknown_group_with_generation_is_illegal() -> None:
    h = Harness()
    codes, records = h.c.commit("ghost", 3, "m", None, [CommitOffset("t", 0, 1)], h.now)
    assert codes == [E.ILLEGAL_GENERATION] and records == []
    assert "ghost" not in h.c.groups
    assert h.c.commit("", -1, "", None, [CommitOffset("t", 0, 1)], h.now)[0] == [E.INVALID_GROUP_ID]


def test_group_commit_checks_member_and_generation() -> None:
    h = Harness()
    (a, b), gen = form_group(h, 2)
    one = [CommitOffset("t", 0, 10)]
    assert h.c.commit("g", gen, a, None, one, h.now)[0] == [E.NONE]
    assert h.c.commit("g", gen - 1, a, None, one, h.now)[0] == [E.ILLEGAL_GENERATION]
    assert h.c.commit("g", gen, "ghost", None, one, h.now)[0] == [E.UNKNOWN_MEMBER_ID]
    assert h.c.commit("g", -1, "", None, one, h.now)[0] == [E.UNKNOWN_MEMBER_ID]
    h.join(a)
    assert h.c.commit("g", gen, b, None, one, h.now)[0] == [E.NONE], "allowed while preparing"
    h.join(b)
    assert h.c.commit("g", gen + 1, b, None, one, h.now)[0] == [E.REBALANCE_IN_PROGRESS]


def test_oversized_metadata_rejected_per_partition() -> None:
    h = Harness(offset_metadata_max_bytes=10)
    codes, records = h.c.commit(
        "s",
        -1,
        "",
        None,
        [CommitOffset("t", 0, 1, -1, "x" * 11), CommitOffset("t", 1, 2, -1, "x" * 10)],
        h.now,
    )
    assert codes == [OFFSET_METADATA_TOO_LARGE, E.NONE] and OFFSET_METADATA_TOO_LARGE == 12
    assert [r.partition for r in records] == [1]
    assert h.c.fetch("s", [("t", 0)]) == {("t", 0): None}


def test_offset_delete_rules() -> None:
    h = Harness()
    h.c.commit("s", -1, "", None, [CommitOffset("t", 0, 1), CommitOffset("u", 0, 2)], h.now)
    err, codes, records = h.c.delete_offsets("s", [("t", 0), ("t", 5)])
    assert (err, codes) == (E.NONE, [E.NONE, E.NONE])
    assert records == [OffsetRecord("s", "t", 0, None)]
    assert h.c.fetch("s", None) == {("u", 0): OffsetInfo(2, -1, "", h.now)}
    assert h.c.delete_offsets("nope", [("t", 0)])[0] == E.GROUP_ID_NOT_FOUND
    (a, _b), gen = form_group(h, 2)
    h.c.commit("g", gen, a, None, [CommitOffset("t", 0, 1), CommitOffset("other", 0, 1)], h.now)
    err, codes, records = h.c.delete_offsets("g", [("t", 0), ("other", 0)])
    assert codes == [E.GROUP_SUBSCRIBED_TO_TOPIC, E.NONE]
    assert records == [OffsetRecord("g", "other", 0, None)]


def test_delete_group_tombstones_offsets() -> None:
    h = Harness()
    h.c.commit("s", -1, "", None, [CommitOffset("t", 0, 1)], h.now)
    codes, records = h.c.delete_groups(["s"])
    assert codes == [E.NONE] and records == [OffsetRecord("s", "t", 0, None)]
    assert h.c.all_committed_offsets() == {}


def test_expiry_of_empty_groups_only() -> None:
    h = Harness(offsets_retention_ms=7 * DAY)
    h.c.commit("idle", -1, "", None, [CommitOffset("t", 0, 1)], h.now)
    (a,), gen = form_group(h, 1)
    h.c.commit("g", gen, a, None, [CommitOffset("t", 0, 5)], h.now)
    h.c.commit("fresh", -1, "", None, [CommitOffset("t", 0, 1)], h.now + 6 * DAY)
    now = h.now + 7 * DAY
    h.c.heartbeat("g", gen, a, None, now)
    records = h.c.expire_offsets(now)
    assert records == [OffsetRecord("idle", "t", 0, None)]
    assert set(h.c.all_committed_offsets()) == {"g", "fresh"}
    assert "idle" not in h.c.groups
    h.c.leave("g", [(a, None)], now)
    assert [r.group_id for r in h.c.expire_offsets(now + 7 * DAY - 1)] == ["fresh"]
    assert h.c.expire_offsets(now + 7 * DAY) == [OffsetRecord("g", "t", 0, None)]


def test_loaded_offsets_start_their_retention_at_load() -> None:
    from streamd.groups.coordinator import GroupConfig, GroupCoordinator

    old = {"g": {("t", 0): OffsetInfo(5, -1, "", 0)}}
    c = GroupCoordinator(GroupConfig(offsets_retention_ms=DAY), old, now_ms=100 * DAY)
    assert c.list_groups() == [("g", "", "Empty")]
    assert c.expire_offsets(100 * DAY + DAY - 1) == []
    assert c.expire_offsets(101 * DAY) == [OffsetRecord("g", "t", 0, None)]


def test_topic_deletion_drops_offsets() -> None:
    h = Harness()
    h.c.commit("s", -1, "", None, [CommitOffset("t", 0, 1), CommitOffset("u", 0, 1)], h.now)
    assert h.c.on_topic_deleted("t") == [OffsetRecord("s", "t", 0, None)]
    assert list(h.c.fetch("s", None)) == [("u", 0)]


def test_subscription_parser() -> None:
    from streamd.groups.model import parse_subscription

    assert parse_subscription(subscription("a", "bb")) == ["a", "bb"]
    assert parse_subscription(b"\x00") is None


def test_commit_timestamp_and_retention_of_old_commit_versions() -> None:
    """OffsetCommit v1 carries the commit time, v2-v4 a retention time (Kafka 3.x semantics)."""
    h = Harness()
    codes, records = h.c.commit(
        "old", -1, "", None,
        [CommitOffset("t", 0, 5, commit_ts=123), CommitOffset("t", 1, 6, retention_ms=DAY)],
        h.now,
    )
    assert codes == [E.NONE, E.NONE]
    assert [r.info for r in records] == [
        OffsetInfo(5, -1, "", 123, -1),
        OffsetInfo(6, -1, "", h.now, h.now + DAY),
    ]


def test_explicit_retention_expires_its_offset_alone() -> None:
    h = Harness()
    h.c.commit("g", -1, "", None,
               [CommitOffset("t", 0, 1, retention_ms=DAY), CommitOffset("t", 1, 2)], h.now)
    assert h.c.expire_offsets(h.now + DAY - 1) == []
    assert h.c.expire_offsets(h.now + DAY) == [OffsetRecord("g", "t", 0, None)]
    assert list(h.c.fetch("g", None)) == [("t", 1)]
    assert h.c.expire_offsets(h.now + 7 * DAY) == [OffsetRecord("g", "t", 1, None)]
    assert h.c.list_groups() == []
    assert h.c.take_group_changes() == {"g": None}


def test_long_retention_outlives_the_broker_default() -> None:
    h = Harness()
    h.c.commit("g", -1, "", None, [CommitOffset("t", 0, 1, retention_ms=30 * DAY)], h.now)
    assert h.c.expire_offsets(h.now + 8 * DAY) == []
    assert h.c.expire_offsets(h.now + 30 * DAY) == [OffsetRecord("g", "t", 0, None)]
