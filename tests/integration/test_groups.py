"""Consumer groups with real clients against a real broker.

Three client libraries share one group (the broker must pick the one assignor they all
support), partitions move when a member leaves or is killed, every record is consumed at least
once, committed offsets resume after consumers and the broker restart, independent groups each
see every record, and the broker answers bad group requests with Kafka's error codes.

Members run in threads (aiokafka in its own event loop); each polls and records what it
receives and what it is assigned. Auto-commit is on with a short interval, so a clean close
commits the final positions.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions
from kio.schema.delete_groups.v2.request import DeleteGroupsRequest
from kio.schema.find_coordinator.v4.request import FindCoordinatorRequest
from kio.schema.heartbeat.v4.request import HeartbeatRequest
from kio.schema.join_group.v7.request import JoinGroupRequest, JoinGroupRequestProtocol
from kio.schema.join_group.v9 import request as join_v9
from kio.schema.offset_commit.v8.request import (
    OffsetCommitRequest,
    OffsetCommitRequestPartition,
    OffsetCommitRequestTopic,
)
from kio.schema.offset_fetch.v8.request import (
    OffsetFetchRequest,
    OffsetFetchRequestGroup,
    OffsetFetchRequestTopics,
)
from kio.schema.sync_group.v5.request import SyncGroupRequest, SyncGroupRequestAssignment
from kio.schema.types import GroupId, TopicName
from kio.static.primitive import i8, i32, i32Timedelta, i64

from streamd.config import KEYS_BY_NAME
from tests.support import ops
from tests.support.broker import REPO_ROOT, BrokerProcess
from tests.support.wire import Wire

PARTITIONS = 6
SESSION_MS = 6000
FAST = {"group.initial.rebalance.delay.ms": "0"}
SETTINGS = {k: v for k, v in FAST.items() if k in KEYS_BY_NAME}
"""Speed-ups, passed only once the broker's config knows the key."""


@pytest.fixture(scope="module")
def gbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path_factory.mktemp("groups-broker") / "data", SETTINGS)
    broker.start()
    yield broker
    broker.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(what: str, check: Callable[[], bool], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def produce_round(bootstrap: str, topic: str, tag: str, per_partition: int) -> set[bytes]:
    values = set()
    for p in range(PARTITIONS):
        batch = [f"{tag}-{p}-{i}".encode() for i in range(per_partition)]
        ops.produce(bootstrap, topic, batch, partition=p)
        values.update(batch)
    return values


class Member:
    """One group member on its own thread; `kind` picks the client library."""

    def __init__(
        self,
        kind: str,
        bootstrap: str,
        group: str,
        topic: str,
        assignor: str | None = None,
        instance: str | None = None,
    ) -> None:
        self.kind, self.bootstrap, self.group, self.topic = kind, bootstrap, group, topic
        self.assignor, self.instance = assignor, instance
        self.seen: list[bytes] = []
        self.assignment: frozenset[int] = frozenset()
        self.revocations = 0
        """Rebalances this member went through (confluent only: its on_revoke callbacks)."""
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{kind}-member", daemon=True)

    def start(self) -> Member:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), f"{self.kind} member did not stop"
        if self.error is not None:
            raise AssertionError(f"{self.kind} member failed") from self.error

    def _run(self) -> None:
        try:
            getattr(self, "_run_" + self.kind.replace("-", "_"))()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def _run_confluent(self) -> None:
        extra = {"group.instance.id": self.instance} if self.instance else {}
        c = Consumer(
            {
                **extra,
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": SESSION_MS,
                "heartbeat.interval.ms": 300,
                "auto.commit.interval.ms": 200,
                "partition.assignment.strategy": self.assignor or "range,roundrobin",
                "topic.metadata.refresh.interval.ms": 2000,
            }
        )

        def revoked(consumer: object, partitions: object) -> None:
            self.revocations += 1

        c.subscribe([self.topic], on_revoke=revoked)
        try:
            while not self._stop.is_set():
                msg = c.poll(0.1)
                if msg is not None:
                    if msg.error() is not None:
                        raise AssertionError(str(msg.error()))
                    self.seen.append(msg.value() or b"")
                self.assignment = frozenset(tp.partition for tp in c.assignment())
        finally:
            c.close()

    def _run_kafka_python(self) -> None:
        from kafka import KafkaConsumer
        from kafka.coordinator.assignors.range import RangePartitionAssignor
        from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

        c = KafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=300,
            auto_commit_interval_ms=200,
            partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
            # Under load the first join can race the topic's first metadata response: the
            # leader then assigns nothing ("No partition metadata") and only notices the
            # partitions at the next refresh, 5 minutes later by default.
            metadata_max_age_ms=2000,
        )
        try:
            while not self._stop.is_set():
                for msgs in c.poll(timeout_ms=100).values():
                    self.seen.extend(m.value for m in msgs)
                self.assignment = frozenset(tp.partition for tp in c.assignment())
        finally:
            c.close()

    def _run_aiokafka(self) -> None:
        from aiokafka import AIOKafkaConsumer

        async def run() -> None:
            c = AIOKafkaConsumer(
                self.topic,
                bootstrap_servers=self.bootstrap,
                group_id=self.group,
                auto_offset_reset="earliest",
                session_timeout_ms=SESSION_MS,
                heartbeat_interval_ms=300,
                auto_commit_interval_ms=200,
                metadata_max_age_ms=2000,  # as for kafka-python above
            )
            await c.start()
            try:
                while not self._stop.is_set():
                    for msgs in (await c.getmany(timeout_ms=100)).values():
                        self.seen.extend(m.value for m in msgs)
                    self.assignment = frozenset(tp.partition for tp in c.assignment())
            finally:
                await c.stop()

        asyncio.run(run())


def covers_exactly_once(members: list[Member]) -> bool:
    counts = Counter(p for m in members for p in m.assignment)
    return sorted(counts) == list(range(PARTITIONS)) and set(counts.values()) == {1}


def seen(members: list[Member]) -> set[bytes]:
    return {v for m in members for v in m.seen}


def committed(bootstrap: str, group: str) -> dict[int, int]:
    client = ops.admin(bootstrap)
    futures = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    result = futures[group].result(20)
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def stop_all(members: list[Member]) -> None:
    for m in members:
        m.stop()


def test_three_client_libraries_share_one_group(gbroker: BrokerProcess) -> None:
    bootstrap = gbroker.bootstrap
    topic, group = unique("shared"), unique("g")
    ops.create_topic(bootstrap, topic, PARTITIONS)
    first = produce_round(bootstrap, topic, "a", 50)
    kinds = ("confluent", "kafka-python", "aiokafka")
    members = [Member(k, bootstrap, group, topic).start() for k in kinds]
    try:
        wait_for(
            "every partition assigned exactly once, to all three members",
            lambda: covers_exactly_once(members) and all(m.assignment for m in members),
        )
        wait_for("the first round consumed", lambda: first <= seen(members))

        client = ops.admin(bootstrap)
        desc = client.describe_consumer_groups([group])[group].result(20)
        assert desc.partition_assignor == "roundrobin", "the only assignor all three support"
        assert len(desc.members) == 3

        leaving = members.pop(1)
        leaving.stop()
        wait_for("the leaver's partitions picked up", lambda: covers_exactly_once(members))
        second = produce_round(bootstrap, topic, "b", 50)
        wait_for("every record consumed", lambda: first | second <= seen([leaving, *members]))
    finally:
        stop_all(members)
    assert committed(bootstrap, group) == {p: 100 for p in range(PARTITIONS)}

    members = [Member(k, bootstrap, group, topic).start() for k in kinds]
    try:
        third = produce_round(bootstrap, topic, "c", 10)
        wait_for("records produced after the restart consumed", lambda: third <= seen(members))
        # A consumer delivers a partition in offset order, so one that started below the
        # committed offset had delivered older records before the new ones: no waiting needed.
        assert seen(members) == third, "consumers resumed from their committed offsets"
    finally:
        stop_all(members)
    assert committed(bootstrap, group) == {p: 110 for p in range(PARTITIONS)}


def test_killed_member_partitions_move_within_session_timeout(gbroker: BrokerProcess) -> None:
    bootstrap = gbroker.bootstrap
    topic, group = unique("killed"), unique("g")
    ops.create_topic(bootstrap, topic, PARTITIONS)
    script = f"""
import sys
from confluent_kafka import Consumer
c = Consumer({{"bootstrap.servers": "{bootstrap}", "group.id": "{group}",
    "session.timeout.ms": {SESSION_MS}, "heartbeat.interval.ms": 300,
    "auto.offset.reset": "earliest"}})
c.subscribe(["{topic}"])
while True:
    c.poll(0.1)
    if c.assignment():
        print("assigned", flush=True)
"""
    victim = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    survivor = Member("confluent", bootstrap, group, topic).start()
    try:
        assert victim.stdout is not None
        assert victim.stdout.readline().startswith("assigned")
        wait_for(
            "both members assigned",
            lambda: 0 < len(survivor.assignment) < PARTITIONS,
        )
        victim.kill()
        victim.wait()
        killed_at = time.monotonic()
        wait_for("the survivor owns every partition", lambda: covers_exactly_once([survivor]))
        assert time.monotonic() - killed_at < SESSION_MS / 1000 + 5
        values = produce_round(bootstrap, topic, "x", 5)
        wait_for("all records consumed by the survivor", lambda: values <= seen([survivor]))
    finally:
        victim.kill()
        victim.wait()
        survivor.stop()


def test_two_groups_each_get_every_record(gbroker: BrokerProcess) -> None:
    bootstrap = gbroker.bootstrap
    topic = unique("fanout")
    ops.create_topic(bootstrap, topic, PARTITIONS)
    values = produce_round(bootstrap, topic, "v", 20)
    one = [Member("confluent", bootstrap, unique("one"), topic).start()]
    two = [Member(k, bootstrap, unique("two"), topic).start() for k in ("aiokafka", "confluent")]
    try:
        wait_for("group one read everything", lambda: values <= seen(one))
        wait_for("group two read everything", lambda: values <= seen(two))
    finally:
        stop_all(one + two)


@pytest.mark.parametrize("assignor", ["range", "roundrobin", "cooperative-sticky"])
def test_assignors(gbroker: BrokerProcess, assignor: str) -> None:
    bootstrap = gbroker.bootstrap
    topic, group = unique(assignor), unique("g")
    ops.create_topic(bootstrap, topic, PARTITIONS)
    values = produce_round(bootstrap, topic, "v", 10)
    members = [Member("confluent", bootstrap, group, topic, assignor).start() for _ in range(3)]
    try:
        wait_for(
            "each of three members owns two partitions",
            lambda: covers_exactly_once(members) and all(len(m.assignment) == 2 for m in members),
        )
        client = ops.admin(bootstrap)
        desc = client.describe_consumer_groups([group])[group].result(20)
        assert desc.partition_assignor == assignor
        leaver = members.pop()
        leaver.stop()
        wait_for("two members cover every partition", lambda: covers_exactly_once(members))
        more = produce_round(bootstrap, topic, "w", 10)
        wait_for("every record consumed", lambda: values | more <= seen([leaver, *members]))
    finally:
        stop_all(members)


def test_static_member_restarts_take_their_place_without_a_rebalance(
    gbroker: BrokerProcess,
) -> None:
    """A follower, then the leader, restart with the same group.instance.id: each gets its old
    partitions back and the other member goes through no rebalance (for the leader, Kafka
    answers JoinGroup < v9 with the old leader id so it acts as a follower)."""
    bootstrap = gbroker.bootstrap
    topic, group = unique("static"), unique("g")
    ops.create_topic(bootstrap, topic, PARTITIONS)

    def member(instance: str) -> Member:
        return Member("confluent", bootstrap, group, topic, "range", instance).start()

    members = {"leader": member("leader")}
    try:
        wait_for(
            "the first member (the leader) owns every partition",
            lambda: len(members["leader"].assignment) == PARTITIONS,
        )
        members["follower"] = member("follower")
        wait_for(
            "both static members assigned",
            lambda: (
                covers_exactly_once(list(members.values()))
                and len(members["leader"].assignment) == PARTITIONS // 2
            ),
        )
        for restarting, other in (("follower", "leader"), ("leader", "follower")):
            owned = members[restarting].assignment
            unchanged = members[other].assignment
            rebalances = members[other].revocations
            members[restarting].stop()
            members[restarting] = member(restarting)
            wait_for(
                f"the restarted {restarting} owns its partitions again",
                lambda r=restarting, o=owned: members[r].assignment == o,  # type: ignore[misc]
            )
            assert members[other].revocations == rebalances, f"{restarting} restart rebalanced"
            assert members[other].assignment == unchanged
        values = produce_round(bootstrap, topic, "s", 5)
        wait_for("every record consumed", lambda: values <= seen(list(members.values())))
    finally:
        stop_all(list(members.values()))


def test_delete_groups_right_after_static_members_session_deadline(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    """Static members leave no LeaveGroup behind: the group empties when their sessions end.
    A DeleteGroups sent the moment the last session deadline has passed must find the group
    Empty, not wait for a timer that runs later (on a 200 ms tick it raced and usually lost).
    On the wire, so that the member's last heartbeat is known to the millisecond."""
    session_ms = 1000
    broker = broker_factory({**SETTINGS, "group.min.session.timeout.ms": str(session_ms)})
    group = unique("deadline")
    with Wire(broker.address) as wire:
        joined = static_join(wire, group, "solo", session_ms=session_ms)
        assert int(joined.error_code.value) == 0
        synced = wire.call(
            SyncGroupRequest(
                group_id=GroupId(group),
                generation_id=joined.generation_id,
                member_id=joined.member_id,
                group_instance_id="solo",
                protocol_type="consumer",
                protocol_name="range",
                assignments=(),
            )
        )
        assert int(synced.error_code.value) == 0
        beat = wire.call(
            HeartbeatRequest(
                group_id=GroupId(group),
                generation_id=joined.generation_id,
                member_id=joined.member_id,
                group_instance_id="solo",
            )
        )
        assert int(beat.error_code.value) == 0
        last_beat = time.time()
        time.sleep(max(0.0, last_beat + session_ms / 1000 - time.time()))
        deleted = wire.call(DeleteGroupsRequest(groups_names=(GroupId(group),)))
    (result,) = deleted.results
    assert int(result.error_code.value) == 0, "the expired static member still held the group"


@pytest.mark.streamd_only
def test_committed_offsets_survive_broker_kill(
    broker_factory: Callable[..., BrokerProcess], tmp_path: Path
) -> None:
    broker = broker_factory(SETTINGS)
    bootstrap = broker.bootstrap
    topic, group = unique("durable"), unique("g")
    ops.create_topic(bootstrap, topic, PARTITIONS)
    first = produce_round(bootstrap, topic, "a", 30)
    members = [Member("confluent", bootstrap, group, topic).start()]
    try:
        wait_for("first round consumed", lambda: first <= seen(members))
    finally:
        stop_all(members)
    assert committed(bootstrap, group) == {p: 30 for p in range(PARTITIONS)}

    broker.restart(hard=True)
    assert committed(bootstrap, group) == {p: 30 for p in range(PARTITIONS)}
    broker.restart()
    assert committed(bootstrap, group) == {p: 30 for p in range(PARTITIONS)}

    second = produce_round(bootstrap, topic, "b", 5)
    members = [Member("kafka-python", bootstrap, group, topic).start()]
    try:
        wait_for("second round consumed", lambda: second <= seen(members))
        assert seen(members) == second, "resumed from the committed offsets (see above)"
    finally:
        stop_all(members)


# ---- bad input, straight on the wire ------------------------------------------------------


def join(wire: Wire, group: str, member_id: str = "", session_ms: int = SESSION_MS) -> Any:
    return wire.call(
        JoinGroupRequest(
            group_id=GroupId(group),
            session_timeout=i32Timedelta.parse(timedelta(milliseconds=session_ms)),
            rebalance_timeout=i32Timedelta.parse(timedelta(milliseconds=10_000)),
            member_id=member_id,
            group_instance_id=None,
            protocol_type="consumer",
            protocols=(JoinGroupRequestProtocol(name="range", metadata=b""),),
        )
    )


def heartbeat(wire: Wire, group: str, generation: int, member_id: str) -> int:
    response = wire.call(
        HeartbeatRequest(
            group_id=GroupId(group),
            generation_id=i32(generation),
            member_id=member_id,
            group_instance_id=None,
        )
    )
    return int(response.error_code.value)


def commit(wire: Wire, group: str, generation: int, member_id: str, metadata: str = "") -> int:
    response = wire.call(
        OffsetCommitRequest(
            group_id=GroupId(group),
            generation_id_or_member_epoch=i32(generation),
            member_id=member_id,
            group_instance_id=None,
            topics=(
                OffsetCommitRequestTopic(
                    name=TopicName(wire_topic),
                    partitions=(
                        OffsetCommitRequestPartition(
                            partition_index=i32(0),
                            committed_offset=i64(1),
                            committed_leader_epoch=i32(-1),
                            committed_metadata=metadata,
                        ),
                    ),
                ),
            ),
        )
    )
    return int(response.topics[0].partitions[0].error_code.value)


wire_topic = "groups-wire-topic"


def test_bad_group_requests_get_kafka_error_codes(gbroker: BrokerProcess) -> None:
    ops.create_topic(gbroker.bootstrap, wire_topic, 1)
    group = unique("wire")
    with Wire(gbroker.address) as wire:
        assert heartbeat(wire, unique("nope"), 1, "ghost") == 25  # UNKNOWN_MEMBER_ID
        assert commit(wire, unique("nope"), 3, "ghost") == 22  # ILLEGAL_GENERATION
        assert int(join(wire, "").error_code.value) == 24  # INVALID_GROUP_ID
        assert int(join(wire, group, session_ms=1000).error_code.value) == 26

        first = join(wire, group)
        assert int(first.error_code.value) == 79  # MEMBER_ID_REQUIRED
        joined = join(wire, group, first.member_id)
        assert int(joined.error_code.value) == 0 and joined.leader == first.member_id
        member, gen = joined.member_id, joined.generation_id
        synced = wire.call(
            SyncGroupRequest(
                group_id=GroupId(group),
                generation_id=gen,
                member_id=member,
                group_instance_id=None,
                protocol_type="consumer",
                protocol_name="range",
                assignments=(SyncGroupRequestAssignment(member_id=member, assignment=b"mine"),),
            )
        )
        assert int(synced.error_code.value) == 0 and synced.assignment == b"mine"

        assert heartbeat(wire, group, gen, member) == 0
        assert heartbeat(wire, group, gen - 1, member) == 22  # ILLEGAL_GENERATION
        assert heartbeat(wire, group, gen, "ghost") == 25  # UNKNOWN_MEMBER_ID
        assert commit(wire, group, gen, "ghost") == 25
        assert commit(wire, group, gen + 1, member) == 22
        assert commit(wire, group, -1, "") == 25, "simple commit into an active group"
        assert commit(wire, group, gen, member, "m" * 5000) == 12  # OFFSET_METADATA_TOO_LARGE
        assert commit(wire, group, gen, member, "ok") == 0

        fetched = wire.call(
            OffsetFetchRequest(
                groups=(
                    OffsetFetchRequestGroup(group_id=GroupId(group), topics=None),
                    OffsetFetchRequestGroup(
                        group_id=GroupId(unique("empty")),
                        topics=(
                            OffsetFetchRequestTopics(
                                name=TopicName(wire_topic), partition_indexes=(i32(0),)
                            ),
                        ),
                    ),
                ),
                require_stable=False,
            )
        )
        mine, other = fetched.groups
        (p,) = mine.topics[0].partitions
        assert (p.committed_offset, p.metadata) == (1, "ok")
        assert other.topics[0].partitions[0].committed_offset == -1

        coordinators = wire.call(
            FindCoordinatorRequest(key_type=i8(0), coordinator_keys=("a", "b"))
        )
        assert [c.port for c in coordinators.coordinators] == [gbroker.kafka_port] * 2
        txn = wire.call(FindCoordinatorRequest(key_type=i8(1), coordinator_keys=("t",)))
        assert int(txn.coordinators[0].error_code.value) == 0  # the transaction coordinator
        assert txn.coordinators[0].port == gbroker.kafka_port


def static_join(
    wire: Wire, group: str, instance: str, version: int = 7, session_ms: int = SESSION_MS
) -> Any:
    module = join_v9 if version == 9 else sys.modules[JoinGroupRequest.__module__]
    return wire.call(
        module.JoinGroupRequest(
            group_id=GroupId(group),
            session_timeout=i32Timedelta.parse(timedelta(milliseconds=session_ms)),
            rebalance_timeout=i32Timedelta.parse(timedelta(milliseconds=10_000)),
            member_id="",
            group_instance_id=instance,
            protocol_type="consumer",
            protocols=(module.JoinGroupRequestProtocol(name="range", metadata=b""),),
        )
    )


def test_static_leader_rejoin_on_the_wire_v7_and_v9(gbroker: BrokerProcess) -> None:
    """KIP-814: below v9 a rejoining static leader is answered with the old leader id (it
    follows); from v9 it learns it leads but must skip the assignment. Neither rebalances."""
    group = unique("kip814")
    with Wire(gbroker.address) as wire:
        joined = static_join(wire, group, "solo")
        assert int(joined.error_code.value) == 0 and joined.leader == joined.member_id
        gen = joined.generation_id
        synced = wire.call(
            SyncGroupRequest(
                group_id=GroupId(group),
                generation_id=gen,
                member_id=joined.member_id,
                group_instance_id="solo",
                protocol_type="consumer",
                protocol_name="range",
                assignments=(
                    SyncGroupRequestAssignment(member_id=joined.member_id, assignment=b"p0"),
                ),
            )
        )
        assert int(synced.error_code.value) == 0

        v7 = static_join(wire, group, "solo")
        assert int(v7.error_code.value) == 0 and v7.generation_id == gen
        assert v7.leader == joined.member_id != v7.member_id and v7.members == ()

        v9 = static_join(wire, group, "solo", 9)
        assert int(v9.error_code.value) == 0 and v9.generation_id == gen
        assert v9.leader == v9.member_id and v9.skip_assignment
        assert [m.member_id for m in v9.members] == [v9.member_id]
        again = wire.call(
            SyncGroupRequest(
                group_id=GroupId(group),
                generation_id=gen,
                member_id=v9.member_id,
                group_instance_id="solo",
                protocol_type="consumer",
                protocol_name="range",
                assignments=(),
            )
        )
        assert int(again.error_code.value) == 0 and again.assignment == b"p0"
