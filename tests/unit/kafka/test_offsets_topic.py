"""``__consumer_offsets`` partitioning and record encoding (Kafka's coordinator schemas)."""

from __future__ import annotations

import struct

import pytest

from streamd.groups.model import Group, GroupState, Member, OffsetInfo
from streamd.kafka import offsets_topic as ot


@pytest.mark.parametrize(("group", "partition"), [
    ("lag-monitor-group", 31),  # values computed with a JVM
    ("ünïcode-grp-€", 21),
    ("polygenelubricants", 0),  # hashCode() == Integer.MIN_VALUE: Kafka's Utils.abs gives 0
])
def test_partition_is_kafkas(group: str, partition: int) -> None:
    assert ot.partition_for(group) == partition


def test_offset_key_and_values() -> None:
    assert ot.offset_key("g", "t", 3) == b"\0\x01\0\x01g\0\x01t\0\0\0\x03"
    v3 = ot.offset_value(OffsetInfo(7, 2, "m", 99))
    assert v3 == struct.pack(">hqih", 3, 7, 2, 1) + b"m" + struct.pack(">q", 99)
    v1 = ot.offset_value(OffsetInfo(7, 2, "m", 99, 199))
    assert v1 == struct.pack(">hqh", 1, 7, 1) + b"m" + struct.pack(">qq", 99, 199)


def test_group_value_v3() -> None:
    group = Group("g", GroupState.STABLE, 1234, 5, "consumer", "range", "m1")
    group.members["m1"] = Member("m1", None, "cid", "/1.2.3.4", 10000, 30000, "consumer",
                                 (("range", b"SUB"),), assignment=b"ASSIGN")
    value = ot.group_value(group)
    expected = (
        struct.pack(">h", 3) + b"\0\x08consumer" + struct.pack(">i", 5) + b"\0\x05range"
        + b"\0\x02m1" + struct.pack(">qi", 1234, 1) + b"\0\x02m1" + b"\xff\xff" + b"\0\x03cid"
        + b"\0\x08/1.2.3.4" + struct.pack(">ii", 30000, 10000) + struct.pack(">i", 3) + b"SUB"
        + struct.pack(">i", 6) + b"ASSIGN"
    )
    assert value == expected
    assert ot.group_key("g") == b"\0\x02\0\x01g"
