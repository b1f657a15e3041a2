"""``streamd restore`` end to end against moto's real S3 endpoint.

One broker (module fixture) fills three topics of different partition counts and configs, a
consumer group commits offsets, and everything is archived (storage API: nothing pending, all
offsets uploaded; ``/v1/cluster/archive``: metadata and offsets stored). The broker is stopped
and its data_dir deleted. Then: ``--dry-run`` writes nothing, ``--topic`` restores only that
topic, a non-empty data_dir is refused; a full restore brings back every archived record
byte-identical from the earliest offset, the configs, the group's committed offsets (a consumer
resumes there), new produce continues at the next offsets and is archived without rewriting
any existing object; a deleted segment object is reported and everything else restored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import ConfigResource

from tests.support import ops
from tests.support.broker import REPO_ROOT, BrokerProcess
from tests.support.moto import MotoS3, make_records, produce, storage_report, wait_until

pytestmark = [pytest.mark.streamd_only]

TIERED = {
    "remote.storage.enable": "true",
    "segment.bytes": "65536",
    "segment.ms": "1500",
    "local.retention.bytes": "65536",
}
TOPICS: dict[str, tuple[int, dict[str, str]]] = {
    "orders": (3, TIERED | {"retention.ms": "864000000"}),
    "events": (1, TIERED | {"max.message.bytes": "500000", "message.timestamp.type": "CreateTime"}),
    "plain": (2, {"cleanup.policy": "delete", "retention.bytes": "10000000"}),
}
GROUP = "restore-group"
COMMITTED = {0: 120, 1: 77, 2: 5}


@dataclasses.dataclass
class Archived:
    bucket: str
    settings: dict[str, str]
    workdir: Path
    records: dict[tuple[str, int], list[tuple[Any, ...]]]
    objects: dict[str, int]


def settings(moto: MotoS3, bucket: str) -> dict[str, str]:
    return moto.broker_settings(bucket) | {
        "tiering.upload_interval_ms": "250",
        "tiering.offsets_archive_interval_ms": "300",
        "log.housekeeping_interval_ms": "250",
    }


def read_all(bootstrap: str, topic: str, partition: int) -> list[tuple[Any, ...]]:
    """Every record from the earliest offset to the high watermark, as a consumer sees it."""
    low, high = ops.watermarks(bootstrap, topic, partition)
    out: list[tuple[Any, ...]] = []
    if high <= low:
        return out
    c = ops.consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, partition, low)])
        deadline = time.monotonic() + 60
        while (not out or out[-1][0] < high - 1) and time.monotonic() < deadline:
            for msg in c.consume(num_messages=1000, timeout=2):
                assert msg.error() is None, msg.error()
                out.append((msg.offset(), msg.key(), msg.value(), tuple(msg.headers() or ()),
                            msg.timestamp()))
    finally:
        c.close()
    return out


def archive_status(broker: BrokerProcess) -> dict[str, Any] | None:
    url = f"http://127.0.0.1:{broker.admin_port}/v1/cluster/archive"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except OSError:
        return None


def all_archived(broker: BrokerProcess) -> bool:
    for topic, (_count, config) in TOPICS.items():
        if config.get("remote.storage.enable") != "true":
            continue
        for part in storage_report(broker.admin_port, topic)["partitions"]:
            behind = part["last_uploaded_offset"] != part["high_watermark"] - 1
            if part["pending_uploads"] or behind:
                return False
    status = archive_status(broker)
    return bool(
        status
        and not status["metadata"]["pending"]
        and not status["offsets"]["pending"]
        and status["offsets"]["offsets"] == len(COMMITTED)
    )


def commit_group(bootstrap: str) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        c.subscribe(["orders"])
        deadline = time.monotonic() + 30
        while not c.assignment() and time.monotonic() < deadline:
            c.poll(0.2)
        c.commit(offsets=[TopicPartition("orders", p, o) for p, o in COMMITTED.items()],
                 asynchronous=False)
    finally:
        c.close()


def run_restore(
    archived: Archived, data_dir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "streamd", "restore", "--set", f"data_dir={data_dir}"]
    for key, value in archived.settings.items():
        cmd += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [*cmd, *extra], cwd=archived.workdir, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def archived(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archived]:
    workdir = tmp_path_factory.mktemp("restore")
    bucket = moto_s3.new_bucket()
    conf = settings(moto_s3, bucket)
    broker = BrokerProcess(workdir / "data", conf, log_path=workdir / "broker.log")
    try:
        broker.start()
        for name, (count, config) in TOPICS.items():
            ops.create_topic(broker.bootstrap, name, count, config)
        base = make_records(2400, seed=11)
        for name, (count, _) in TOPICS.items():
            recs = [dataclasses.replace(r, partition=i % count) for i, r in enumerate(base)]
            produce(broker.bootstrap, name, recs[: 800 * count])
        commit_group(broker.bootstrap)
        wait_until("everything archived", lambda: all_archived(broker), timeout=40, interval=0.5)
        records = {
            (name, p): read_all(broker.bootstrap, name, p)
            for name, (count, _) in TOPICS.items()
            for p in range(count)
        }
        broker.stop()
    except BaseException:
        print(broker.log_tail())
        broker.close()
        raise
    shutil.rmtree(workdir / "data")
    yield Archived(bucket, conf, workdir, records, moto_s3.objects(bucket))


def test_dry_run_topic_filter_and_non_empty_refusal(archived: Archived, tmp_path: Path) -> None:
    target = tmp_path / "data"
    dry = run_restore(archived, target, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "DRY RUN" in dry.stdout and "orders" in dry.stdout and "0:[0,800)" in dry.stdout
    assert not target.exists(), "--dry-run writes nothing"

    only = run_restore(archived, target, "--topic", "events", "--format", "json")
    assert only.returncode == 0, only.stderr
    summary = json.loads(only.stdout)
    assert [t["name"] for t in summary["topics"]] == ["events"]
    assert sorted(p.name for p in (target / "topics").iterdir()) == ["events"]

    refused = run_restore(archived, target)
    assert refused.returncode == 1
    assert "is not empty" in refused.stderr and "events" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    missing = run_restore(archived, tmp_path / "x", "--topic", "nope")
    assert missing.returncode == 1 and "'nope' is not in the archive" in missing.stderr


def test_restore_serves_everything_and_resumes(
    archived: Archived, moto_s3: MotoS3, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    done = run_restore(archived, data_dir, "--format", "json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["complete"] and summary["groups"] == {GROUP: 3}
    plain = next(t for t in summary["topics"] if t["name"] == "plain")
    assert [p["next_offset"] for p in plain["partitions"]] == [0, 0], "plain never tiered"

    broker = BrokerProcess(data_dir, archived.settings, log_path=tmp_path / "broker.log")
    try:
        broker.start()
        wait_until("admin API", lambda: archive_status(broker))
        for (name, p), before in archived.records.items():
            if TOPICS[name][1].get("remote.storage.enable") == "true":
                assert read_all(broker.bootstrap, name, p) == before, f"{name}-{p} differs"

        admin = ops.admin(broker.bootstrap)
        for name, (_count, config) in TOPICS.items():
            resource = ConfigResource(ConfigResource.Type.TOPIC, name)
            described = admin.describe_configs([resource])[resource].result(15)
            assert {k: described[k].value for k in config} == config
        meta = admin.list_topics(timeout=15)
        assert {n: len(meta.topics[n].partitions) for n in TOPICS} == {
            n: c for n, (c, _) in TOPICS.items()
        }

        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": GROUP,
                      "enable.auto.commit": False, "auto.offset.reset": "latest"})
        try:
            committed = c.committed([TopicPartition("orders", p) for p in COMMITTED], timeout=15)
            assert {tp.partition: tp.offset for tp in committed} == COMMITTED
            c.subscribe(["orders"])
            first: dict[int, int] = {}
            deadline = time.monotonic() + 30
            while len(first) < len(COMMITTED) and time.monotonic() < deadline:
                msg = c.poll(0.5)
                if msg is not None and msg.error() is None:
                    first.setdefault(int(msg.partition() or 0), int(msg.offset() or 0))
            assert first == COMMITTED, "the group resumes from its committed offsets"
        finally:
            c.close()

        end = len(archived.records[("orders", 0)])
        new = [b"after-restore-%d" % i for i in range(50)]
        acked = ops.produce(broker.bootstrap, "orders", new)
        assert acked == list(range(end, end + 50))

        def archived_again() -> bool:
            part = storage_report(broker.admin_port, "orders")["partitions"][0]
            return bool(part["last_uploaded_offset"] == end + 49)

        wait_until("new records archived", archived_again, timeout=20)
        objects = moto_s3.objects(archived.bucket)
        for key, size in archived.objects.items():
            if key.endswith((".log", ".index")):
                assert objects.get(key) == size, f"{key} was rewritten or lost"
        assert len([k for k in objects if k.endswith(".log")]) > len(
            [k for k in archived.objects if k.endswith(".log")]
        )
        status = archive_status(broker)
        assert status is not None and status["blocked"] is None, "same cluster, same archive"
    finally:
        broker.close()


def test_missing_segment_is_reported_and_the_rest_restored(
    archived: Archived, moto_s3: MotoS3, tmp_path: Path
) -> None:
    seg = sorted(k for k in moto_s3.objects(archived.bucket) if "/events/" in k
                 and k.endswith(".log"))[1]
    moto_s3.admin.delete_object(Bucket=archived.bucket, Key=seg)
    done = run_restore(archived, tmp_path / "data")
    assert done.returncode == 3, done.stderr
    assert "restore incomplete" in done.stderr
    assert "NOT RESTORED" in done.stdout and "is missing from the bucket" in done.stdout
    from streamd.tiering.keys import parse_segment_name

    base, last = parse_segment_name(seg) or (-1, -1)
    assert f"events-0 offsets {base}-{last}" in done.stdout
    assert sorted(p.name for p in (tmp_path / "data" / "topics").iterdir()) == [
        "events", "orders", "plain"
    ]
