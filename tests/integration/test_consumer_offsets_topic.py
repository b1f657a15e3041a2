"""``__consumer_offsets`` read the way lag monitors read it.

Records are decoded here by hand, following Kafka's coordinator record schemas (the way Burrow
decodes them), not with streamd's encoder. The Burrow test runs Debian's Burrow 1.2 against the
broker with its packaged defaults (sarama speaking Kafka 0.8: Fetch v0, ListOffsets v0).
"""

from __future__ import annotations

import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.support import burrow as burrow_support
from tests.support.broker import BrokerProcess
from tests.support.ops import create_topic
from tests.support.ops import produce as produce_values
from tests.support.wire import Wire

OFFSETS = "__consumer_offsets"
JAVA_PARTITION = {"lag-monitor-group": 31}
"""``abs("lag-monitor-group".hashCode()) % 50`` as computed by a JVM."""


def _string(buf: bytes, pos: int) -> tuple[str | None, int]:
    (n,) = struct.unpack_from(">h", buf, pos)
    if n < 0:
        return None, pos + 2
    return buf[pos + 2 : pos + 2 + n].decode(), pos + 2 + n


def decode_key(key: bytes) -> tuple[str, ...] | tuple[str, str, str, int]:
    (version,) = struct.unpack_from(">h", key, 0)
    group, pos = _string(key, 2)
    assert group is not None
    if version in (0, 1):
        topic, pos = _string(key, pos)
        (partition,) = struct.unpack_from(">i", key, pos)
        return ("offset", group, topic or "", partition)
    assert version == 2, version
    return ("group", group)


def decode_offset_value(value: bytes) -> dict[str, Any]:
    (version,) = struct.unpack_from(">h", value, 0)
    (offset,) = struct.unpack_from(">q", value, 2)
    pos = 10
    epoch = -1
    if version >= 3:
        (epoch,) = struct.unpack_from(">i", value, pos)
        pos += 4
    metadata, pos = _string(value, pos)
    (commit_ts,) = struct.unpack_from(">q", value, pos)
    out = {"version": version, "offset": offset, "leader_epoch": epoch, "metadata": metadata,
           "commit_timestamp": commit_ts}
    if version == 1:
        out["expire_timestamp"] = struct.unpack_from(">q", value, pos + 8)[0]
    return out


def decode_group_value(value: bytes) -> dict[str, Any]:
    (version,) = struct.unpack_from(">h", value, 0)
    protocol_type, pos = _string(value, 2)
    (generation,) = struct.unpack_from(">i", value, pos)
    protocol, pos = _string(value, pos + 4)
    leader, pos = _string(value, pos)
    if version >= 2:
        pos += 8  # current state timestamp
    (count,) = struct.unpack_from(">i", value, pos)
    pos += 4
    members = []
    for _ in range(count):
        member_id, pos = _string(value, pos)
        if version >= 3:
            _instance, pos = _string(value, pos)
        client_id, pos = _string(value, pos)
        client_host, pos = _string(value, pos)
        pos += 8 if version >= 1 else 4  # rebalance + session timeouts
        (n,) = struct.unpack_from(">i", value, pos)
        pos += 4 + n
        (n,) = struct.unpack_from(">i", value, pos)
        assignment = value[pos + 4 : pos + 4 + n]
        pos += 4 + n
        members.append({"member_id": member_id, "client_id": client_id,
                        "client_host": client_host, "assignment": assignment})
    return {"version": version, "protocol_type": protocol_type, "generation": generation,
            "protocol": protocol, "leader": leader, "members": members}


def read_offsets_topic(bootstrap: str, partition: int) -> list[tuple[Any, bytes | None]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(OFFSETS, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out: list[tuple[Any, bytes | None]] = []
        deadline = time.monotonic() + 20
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out += [(decode_key(r.key), r.value) for r in records]
        return out
    finally:
        consumer.close()


def wait_for(bootstrap: str, partition: int, predicate: Any, timeout: float = 20) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        records = read_offsets_topic(bootstrap, partition)
        if predicate(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        from kafka.structs import OffsetAndMetadata

        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(offset, "lag", -1)})
    finally:
        consumer.close()


def committed_in_topic(records: list[Any], group: str, topic: str) -> list[dict[str, Any]]:
    return [
        decode_offset_value(value)
        for key, value in records
        if key == ("offset", group, topic, 0) and value is not None
    ]


def test_a_commit_is_readable_from_consumer_offsets(broker: BrokerProcess, topic_name: str
                                                    ) -> None:
    group = "lag-monitor-group"
    create_topic(broker.bootstrap, topic_name)
    produce_values(broker.bootstrap, topic_name, [b"x"] * 10)
    commit(broker.bootstrap, group, topic_name, 7)
    records = wait_for(broker.bootstrap, JAVA_PARTITION[group],
                       lambda rs: committed_in_topic(rs, group, topic_name))
    values = committed_in_topic(records, group, topic_name)
    assert values, records
    assert values[-1]["version"] == 3
    assert (values[-1]["offset"], values[-1]["metadata"]) == (7, "lag")
    assert abs(values[-1]["commit_timestamp"] - time.time() * 1000) < 60_000


def _partition(group: str) -> int:
    from streamd.kafka.offsets_topic import partition_for

    return partition_for(group)


def test_group_changes_are_written_as_group_metadata(broker: BrokerProcess, topic_name: str
                                                     ) -> None:
    group = f"g-{topic_name}"
    create_topic(broker.bootstrap, topic_name)
    produce_values(broker.bootstrap, topic_name, [b"x"] * 3)
    consumer = KafkaConsumer(topic_name, bootstrap_servers=broker.bootstrap, group_id=group,
                             client_id="lag-client", auto_offset_reset="earliest")
    try:
        seen = 0
        deadline = time.monotonic() + 30
        while seen < 3 and time.monotonic() < deadline:
            seen += sum(len(v) for v in consumer.poll(timeout_ms=500).values())
        consumer.commit()
    finally:
        consumer.close()

    def stable_then_empty(records: list[Any]) -> bool:
        states = [decode_group_value(v) for k, v in records if k == ("group", group) and v]
        return len(states) >= 2 and not states[-1]["members"]

    records = wait_for(broker.bootstrap, _partition(group), stable_then_empty)
    states = [decode_group_value(v) for k, v in records if k == ("group", group) and v]
    stable = next(s for s in states if s["members"])
    assert (stable["version"], stable["protocol_type"]) == (3, "consumer")
    assert stable["leader"] == stable["members"][0]["member_id"]
    assert stable["members"][0]["client_id"] == "lag-client"
    assert topic_name.encode() in stable["members"][0]["assignment"]
    assert states[-1]["generation"] > stable["generation"]
    assert committed_in_topic(records, group, topic_name)[-1]["offset"] == 3

    with Wire(broker.address) as wire:
        from kio.schema.delete_groups.v2.request import DeleteGroupsRequest

        answer = wire.call(DeleteGroupsRequest(groups_names=(group,)))
        assert answer.results[0].error_code == 0
    records = wait_for(broker.bootstrap, _partition(group),
                       lambda rs: rs[-1][1] is None and rs[-1][0][0] == "offset")
    tail = {k: v for k, v in records if k[1] == group}
    assert tail[("group", group)] is None
    assert tail[("offset", group, topic_name, 0)] is None


def test_commit_with_retention_time_is_written_as_value_v1(broker: BrokerProcess,
                                                         topic_name: str) -> None:
    from kafka.protocol.old import commit as old_commit

    group = f"r-{topic_name}"
    create_topic(broker.bootstrap, topic_name)
    with Wire(broker.address) as wire:
        answer = wire.call_old(old_commit.OffsetCommitRequest_v2(
            consumer_group=group, consumer_group_generation_id=-1, consumer_id="",
            retention_time=3_600_000, topics=[(topic_name, [(0, 5, "")])]))
        assert answer["topics"][0]["partitions"][0]["error_code"] == 0
    records = wait_for(broker.bootstrap, _partition(group),
                       lambda rs: committed_in_topic(rs, group, topic_name))
    value = committed_in_topic(records, group, topic_name)[-1]
    assert value["version"] == 1
    assert value["expire_timestamp"] - value["commit_timestamp"] == 3_600_000


def test_topic_is_seeded_from_the_offset_store(broker_factory: Any, topic_name: str) -> None:
    """An upgraded (or restored) broker has committed offsets but no topic yet: it writes one
    record per live offset when it creates the topic."""
    broker = broker_factory()
    group = "lag-monitor-group"
    create_topic(broker.bootstrap, topic_name)
    commit(broker.bootstrap, group, topic_name, 2)
    broker.stop()
    shutil.rmtree(Path(broker.data_dir) / "topics" / OFFSETS)
    broker.start()
    records = wait_for(broker.bootstrap, JAVA_PARTITION[group],
                       lambda rs: committed_in_topic(rs, group, topic_name))
    assert [v["offset"] for v in committed_in_topic(records, group, topic_name)] == [2]


@pytest.fixture
def burrow(broker_factory: Any, tmp_path: Path) -> Iterator[tuple[BrokerProcess,
                                                                  burrow_support.Burrow]]:
    missing = burrow_support.available()
    if missing:
        pytest.skip(missing)
    broker = broker_factory()
    monitor = burrow_support.Burrow(tmp_path / "burrow", broker.bootstrap)
    try:
        monitor.start()
        yield broker, monitor
    finally:
        monitor.close()


def test_burrow_reports_the_lag_of_a_group(burrow: tuple[BrokerProcess, burrow_support.Burrow],
                                           topic_name: str) -> None:
    broker, monitor = burrow
    group = "lag-monitor-group"
    create_topic(broker.bootstrap, topic_name)
    produce_values(broker.bootstrap, topic_name, [b"x"] * 10)
    commit(broker.bootstrap, group, topic_name, 4)
    deadline = time.monotonic() + 60
    state: Any = None
    while time.monotonic() < deadline:
        state = monitor.get(f"/v3/kafka/streamd/consumer/{group}")
        partitions = (state.get("topics") or {}).get(topic_name) or []
        offsets = [o for p in partitions for o in (p.get("offsets") or []) if o]
        if offsets and offsets[-1]["offset"] == 4 and partitions[0].get("current-lag") == 6:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"Burrow never saw the commit: {state}\n{monitor.log_tail()}")
    topics = monitor.get("/v3/kafka/streamd/topic")
    assert topic_name in topics["topics"]
    assert monitor.get(f"/v3/kafka/streamd/topic/{topic_name}")["offsets"] == [10]


def test_restored_broker_rebuilds_consumer_offsets(broker_factory: Any, topic_name: str,
                                                  tmp_path: Path) -> None:
    """The topic is not archived (it is derived): ``streamd restore`` brings back the committed
    offsets and the restored broker writes them into a fresh ``__consumer_offsets``."""
    import json
    import os
    import subprocess
    import sys
    import urllib.request

    broker = broker_factory({"tiering.offsets_archive_interval_ms": "200"})
    group = "lag-monitor-group"
    create_topic(broker.bootstrap, topic_name)
    commit(broker.bootstrap, group, topic_name, 0)  # the topic is not tiered: 0 is its end

    def archived() -> bool:
        url = f"http://127.0.0.1:{broker.admin_port}/v1/cluster/archive"
        with urllib.request.urlopen(url, timeout=5) as resp:
            status = json.loads(resp.read())
        return not status["offsets"]["pending"] and status["offsets"]["offsets"] >= 1 \
            and not status["metadata"]["pending"]

    deadline = time.monotonic() + 30
    while not archived():
        assert time.monotonic() < deadline, "offsets never archived"
        time.sleep(0.2)
    broker.stop()
    store = f"file://{broker.workdir / 'bucket'}"
    restored = BrokerProcess(tmp_path / "restored" / "data", {"tiering.store": store},
                             log_path=tmp_path / "restored.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    done = subprocess.run(
        [sys.executable, "-m", "streamd", "restore", "--set",
         f"data_dir={restored.data_dir}", "--set", f"tiering.store={store}"],
        capture_output=True, text=True, timeout=60, env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (restored.data_dir / "topics" / OFFSETS).exists()
    try:
        restored.start()
        records = wait_for(restored.bootstrap, JAVA_PARTITION[group],
                           lambda rs: committed_in_topic(rs, group, topic_name))
        assert [v["offset"] for v in committed_in_topic(records, group, topic_name)] == [0]
    finally:
        restored.close()
