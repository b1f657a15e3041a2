from __future__ import annotations

import uuid

import pytest

from streamd.errors import InvalidTopic
from streamd.tiering import keys

TID = "8d1f3c9e-6a0b-4c1e-9f3a-2b7d5e4a1c00"


def test_layout_is_stable() -> None:
    """Golden keys: changing them orphans every bucket already written."""
    assert (
        keys.segment_key("orders", TID, 3, 0, 99, incarnation="3f09a1c2")
        == f"0558fcd9/orders/{TID}/3/00000000000000000000-00000000000000000099-3f09a1c2.log"
    )
    assert (
        keys.segment_index_key("orders", TID, 3, 0, 99, incarnation="3f09a1c2")
        == f"0558fcd9/orders/{TID}/3/00000000000000000000-00000000000000000099-3f09a1c2.index"
    )
    # the layout before incarnations (archives written then are still named by their manifests)
    assert (
        keys.segment_key("orders", TID, 3, 0, 99, incarnation="")
        == f"0558fcd9/orders/{TID}/3/00000000000000000000-00000000000000000099.log"
    )
    assert keys.partition_manifest_key("orders", TID, 3) == f"0558fcd9/orders/{TID}/3/manifest.json"
    assert keys.topic_manifest_key("orders", TID) == f"d3a9234a/orders/{TID}/topic.json"
    assert keys.CLUSTER_METADATA_KEY == "cluster/metadata.json"
    assert keys.CLUSTER_OFFSETS_KEY == "cluster/offsets.json"
    assert keys.cluster_key("acls.json") == "cluster/acls.json"


INC = "0a1b2c3d"


def test_keys_are_deterministic_and_uuid_objects_accepted() -> None:
    a = keys.segment_key("t", TID, 0, 10, 20, incarnation=INC)
    assert a == keys.segment_key("t", TID, 0, 10, 20, incarnation=INC)
    assert a == keys.segment_key("t", uuid.UUID(TID), 0, 10, 20, incarnation=INC)
    assert a != keys.segment_key("t", TID, 1, 10, 20, incarnation=INC)
    assert a != keys.segment_key("t", "other-id", 0, 10, 20, incarnation=INC)


def test_incarnations_never_share_a_key() -> None:
    """Invariant 9: two histories of a partition that both hold offsets 10-20 write two
    objects; neither can overwrite the other."""
    fresh = {keys.new_incarnation() for _ in range(50)}
    assert len(fresh) == 50
    made = {keys.segment_key("t", TID, 0, 10, 20, incarnation=i) for i in fresh}
    assert len(made) == 50
    assert all(keys.parse_segment_name(k) == (10, 20) for k in made)
    for bad in ("UPPER", "x" * 17, "a/b", "-", "g0"):
        with pytest.raises(ValueError):
            keys.segment_key("t", TID, 0, 10, 20, incarnation=bad)


def test_partitions_spread_over_prefixes() -> None:
    prefixes = {keys.partition_prefix("hot", TID, p)[:2] for p in range(64)}
    assert len(prefixes) > 30
    assert all(keys.partition_prefix("hot", TID, p).endswith(f"/hot/{TID}/{p}/") for p in range(4))


def test_segment_keys_sort_in_offset_order() -> None:
    ranges = [(0, 9), (10, 99), (100, 12345), (12346, 10**15)]
    made = [keys.segment_key("t", TID, 0, b, e, incarnation=INC) for b, e in ranges]
    assert sorted(made) == made
    assert [keys.parse_segment_name(k) for k in made] == ranges
    assert keys.parse_segment_name(keys.partition_manifest_key("t", TID, 0)) is None


@pytest.mark.parametrize(
    "topic", ["", ".", "..", "a/b", "../etc", "a b", "x" * 250, "tópico", "a\\b", "a\n"]
)
def test_invalid_topic_names_never_reach_a_key(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        keys.segment_key(topic, TID, 0, 0, 1, incarnation=INC)
    with pytest.raises(InvalidTopic):
        keys.topic_manifest_key(topic, TID)


@pytest.mark.parametrize(
    "topic", ["a", "A.b_c-9", "x" * 249, "...", "__consumer_offsets", ".hidden"]
)
def test_valid_topic_names(topic: str) -> None:
    assert f"/{topic}/" in keys.partition_manifest_key(topic, TID, 0)


@pytest.mark.parametrize("topic_id", ["", "..", "a/b", "x" * 65, "id with space"])
def test_invalid_topic_ids(topic_id: str) -> None:
    with pytest.raises(ValueError):
        keys.partition_manifest_key("t", topic_id, 0)


def test_invalid_numbers() -> None:
    with pytest.raises(ValueError):
        keys.partition_prefix("t", TID, -1)
    with pytest.raises(ValueError):
        keys.segment_key("t", TID, 0, 5, 4, incarnation=INC)
    with pytest.raises(ValueError):
        keys.segment_key("t", TID, 0, -1, 4, incarnation=INC)
    with pytest.raises(ValueError):
        keys.cluster_key("../x")
