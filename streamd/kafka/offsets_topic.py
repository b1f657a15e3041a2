"""``__consumer_offsets`` as Kafka has it: a read-only internal topic derived from the groups.

Lag monitors (Burrow, kminion, Kafka Lag Exporter's topic mode) read committed offsets and group
metadata from this topic instead of asking the coordinator. streamd's own offset store
(:mod:`streamd.groups.offset_log`) stays the source of truth; this module mirrors every change
into the topic, as :class:`streamd.groups.service.GroupObserver`:

- a commit or offset deletion becomes an OffsetCommitKey v1 record (group, topic, partition) with
  an OffsetCommitValue v3 (offset, leader epoch, metadata, commit time), or v1 when the commit
  carried a retention time (expire time), or a null value (tombstone), as Kafka 3.x writes;
- a group whose generation completed with an assignment, or that became Empty, becomes a
  GroupMetadataKey v2 record with a GroupMetadataValue v3 (members, their subscriptions and
  assignments); a deleted group a tombstone.

Records of group G go to partition ``abs(java hashCode(G)) % 50``, as in Kafka. The topic is
internal: Metadata marks it ``is_internal``, it is never auto-created as a user topic, and users
cannot create, delete, alter or produce to it. It is created with Kafka's 50 partitions when the
broker starts, and then seeded with one record per live offset and per group when it is empty
(first start, after ``streamd restore``, which restores the offsets but not this topic: it is not
archived, ``remote.storage.enable=false``).

streamd does not compact topics, so the topic keeps ``retention.ms`` (Kafka's
``offsets.retention.minutes``, 7 days) instead of compaction; to keep every live offset
readable from the earliest offset, the whole state is re-written every half retention period.
Records are appended as they happen; the commit is acknowledged once the offset store has it,
without waiting for this copy (a reader sees it as soon as the partition's high watermark
covers it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import fields
from typing import Any, get_args

from streamd.errors import StreamdError
from streamd.groups.model import Group, OffsetInfo, OffsetRecord
from streamd.kafka import legacy
from streamd.kafka.legacy.records import Record, build_batch

log = logging.getLogger("streamd.groups")

OFFSETS_TOPIC = "__consumer_offsets"
INTERNAL_TOPICS = frozenset({OFFSETS_TOPIC})
DEFAULT_PARTITIONS = 50
TOPIC_OVERRIDES = {
    "cleanup.policy": "delete",
    "remote.storage.enable": "false",
    "segment.ms": str(3_600_000 * 6),
}


def is_internal(name: str) -> bool:
    return name in INTERNAL_TOPICS


def java_hash(text: str) -> int:
    """``String.hashCode()``: over UTF-16 code units, 32-bit wrapping."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(group_id: str, partitions: int = DEFAULT_PARTITIONS) -> int:
    h = java_hash(group_id)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def offset_key(group_id: str, topic: str, partition: int) -> bytes:
    return legacy.encode_record(
        "OffsetCommitKey", 1, group=group_id, topic=topic, partition=partition
    )


def offset_value(info: OffsetInfo) -> bytes:
    if info.expire_ts >= 0:
        return legacy.encode_record(
            "OffsetCommitValue", 1, offset=info.offset, metadata=info.metadata,
            commit_timestamp=info.commit_ts, expire_timestamp=info.expire_ts,
        )
    return legacy.encode_record(
        "OffsetCommitValue", 3, offset=info.offset, leader_epoch=info.leader_epoch,
        metadata=info.metadata, commit_timestamp=info.commit_ts,
    )


def group_key(group_id: str) -> bytes:
    return legacy.encode_record("GroupMetadataKey", 2, group=group_id)


def group_value(group: Group) -> bytes:
    members_field = next(f for f in fields(legacy.record("GroupMetadataValue", 3))
                         if f.name == "members")
    member_type: Any = get_args(members_field.type)[0]
    members = tuple(
        member_type(
            member_id=m.member_id,
            group_instance_id=m.instance_id,
            client_id=m.client_id,
            client_host=m.client_host,
            rebalance_timeout=m.rebalance_timeout_ms,
            session_timeout=m.session_timeout_ms,
            subscription=m.metadata_for(group.protocol_name),
            assignment=m.assignment,
        )
        for m in group.members.values()
    )
    return legacy.encode_record(
        "GroupMetadataValue", 3,
        protocol_type=group.protocol_type or "",
        generation=group.generation,
        protocol=group.protocol_name,
        leader=group.leader_id,
        current_state_timestamp=group.state_since_ms,
        members=members,
    )


def offset_records(records: Iterable[OffsetRecord]) -> list[tuple[str, Record]]:
    """(group id, (timestamp, key, value)) for each offset change."""
    now = int(time.time() * 1000)
    return [
        (
            r.group_id,
            (
                r.info.commit_ts if r.info is not None else now,
                offset_key(r.group_id, r.topic, r.partition),
                offset_value(r.info) if r.info is not None else None,
            ),
        )
        for r in records
    ]


def group_records(changes: dict[str, Group | None]) -> list[tuple[str, Record]]:
    now = int(time.time() * 1000)
    return [
        (group_id, (now, group_key(group_id), group_value(g) if g is not None else None))
        for group_id, g in changes.items()
    ]


class OffsetsTopic:
    """The writer of ``__consumer_offsets`` (a :class:`GroupObserver`)."""

    def __init__(self, logs: Any, waiters: Any, retention_ms: int) -> None:
        self.logs = logs
        self.waiters = waiters
        self.retention_ms = retention_ms
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self) -> bool:
        """Create the topic if it is missing; True when it holds no record yet (seed it)."""
        topic = self.logs.get(OFFSETS_TOPIC)
        if topic is None:
            overrides = dict(TOPIC_OVERRIDES, **{"retention.ms": str(self.retention_ms)})
            topic = self.logs.create_topic(OFFSETS_TOPIC, DEFAULT_PARTITIONS, overrides)
        return all(p.log_end_offset == 0 for p in topic.partitions)

    def seed(self, groups: Any) -> None:
        """Write the whole current state: every live offset and every group with members."""
        records = [
            OffsetRecord(group_id, t, p, info)
            for group_id, committed in groups.all_committed_offsets().items()
            for (t, p), info in committed.items()
        ]
        self.offsets_changed(records)
        live = {
            g.group_id: g for g in groups.coordinator.groups.values() if g.members
        }
        if live:
            self.groups_changed(live)

    async def refresh_loop(self, groups: Any) -> None:
        """Re-write the state every half retention so that it stays readable from the start."""
        period = max(self.retention_ms // 2, 60_000) / 1000
        while True:
            await asyncio.sleep(period)
            try:
                self.seed(groups)
            except Exception:
                log.exception("refreshing %s failed", OFFSETS_TOPIC)

    def offsets_changed(self, records: list[OffsetRecord]) -> None:
        self._append(offset_records(records))

    def groups_changed(self, changes: dict[str, Group | None]) -> None:
        self._append(group_records(changes))

    def _append(self, keyed: list[tuple[str, Record]]) -> None:
        topic = self.logs.get(OFFSETS_TOPIC)
        if topic is None or not keyed:
            return
        count = len(topic.partitions)
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for group_id, record in keyed:
            by_partition[partition_for(group_id, count)].append(record)
        now = int(time.time() * 1000)
        for index, records in by_partition.items():
            plog = topic.partitions[index]
            try:
                result = plog.stage_append(build_batch(records), now_ms=now)
            except StreamdError as exc:
                log.warning("cannot append to %s-%d: %s", OFFSETS_TOPIC, index, exc)
                continue
            task = asyncio.ensure_future(self._durable(plog, index, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _durable(self, plog: Any, index: int, result: Any) -> None:
        try:
            await plog.wait_durable(result)
        except StreamdError as exc:
            log.warning("cannot write %s-%d: %s", OFFSETS_TOPIC, index, exc)
            return
        self.waiters.notify(OFFSETS_TOPIC, index)
