"""The archive never holds data of an undecided transaction (issues 16, 20, 14).

The uploader archives a segment only when every offset in it lies below the partition's last
stable offset, and never ends the archive between an aborted transaction's records and its
ABORT marker (:mod:`streamd.tiering.candidates`). Checked end to end with real clients and a
moto bucket:

- a transaction left open while segments roll and the uploader runs keeps everything from its
  first offset on out of the bucket (reported as waiting for the LSO, health stays ok); once it
  ends the archive catches up, and a read_committed replay from the bucket, the local copy gone,
  answers exactly what the local log answered;
- a read replica sharing the bucket never shows the open transaction's records to a
  read_committed (or any) consumer, and after the abort serves exactly the committed records;
- ``streamd restore`` of a bucket written while one transaction was open and another had been
  aborted with its marker still in the active segment: the restored broker's read_committed
  consumers see neither transaction's records, and its last stable offset is its end.

Waits are for states the uploader reaches deterministically (nothing left to upload), never
fixed sleeps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from streamd.tiering import keys
from tests.support import ops
from tests.support.archive import health
from tests.support.broker import REPO_ROOT, BrokerProcess
from tests.support.moto import MotoS3, storage_report, wait_until
from tests.support.txn import drain, list_offsets, plain_produce, txn_producer, wait_stable

pytestmark = [pytest.mark.streamd_only]

PAD = b"." * 900
SMALL = {
    "remote.storage.enable": "true",
    "segment.bytes": "16384",
}


def settings(moto: MotoS3, bucket: str, prefix: str = "", **extra: str) -> dict[str, str]:
    out = moto.broker_settings(bucket) | {
        "tiering.upload_interval_ms": "250",
        "tiering.offsets_archive_interval_ms": "300",
        "tiering.readreplica_sync_interval_ms": "1000",
        "log.housekeeping_interval_ms": "250",
        "tiering.merge_target_bytes": "0",
        **extra,
    }
    if prefix:
        out["tiering.store"] = f"s3://{bucket}/{prefix}"
    return out


def values(tag: str, n: int) -> list[bytes]:
    return [f"{tag}-{i}".encode() + PAD for i in range(n)]


def plain_send(bootstrap: str, topic: str, partition: int, vs: list[bytes]) -> None:
    """Plain records in batches of a few records, so segments roll (and are trimmed) between
    them."""
    for i in range(0, len(vs), 6):
        plain_produce(bootstrap, topic, partition, vs[i : i + 6])


def txn_send(producer: Any, topic: str, partition: int, vs: list[bytes]) -> None:
    for v in vs:
        producer.produce(topic, v, partition=partition)
    assert producer.flush(30) == 0


def partition_report(broker: BrokerProcess, topic: str, partition: int = 0) -> dict[str, Any]:
    return storage_report(broker.admin_port, topic)["partitions"][partition]  # type: ignore[no-any-return]


def settled(broker: BrokerProcess, topic: str, partition: int = 0) -> dict[str, Any]:
    """The partition's storage report once nothing it holds may be uploaded any more (the
    report computes ``pending_uploads`` from the log as it is now) and something is archived."""

    def probe() -> dict[str, Any] | None:
        r = partition_report(broker, topic, partition)
        return r if r["pending_uploads"] == 0 and r["remote_segments"] >= 1 else None

    return wait_until(f"{topic}-{partition}: nothing left to upload", probe, timeout=60)  # type: ignore[no-any-return]


def caught_up(broker: BrokerProcess, topic: str, partition: int = 0) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        r = partition_report(broker, topic, partition)
        return r if r["last_uploaded_offset"] == r["high_watermark"] - 1 else None

    return wait_until(f"{topic}-{partition}: archive up to the end", probe, timeout=60)  # type: ignore[no-any-return]


def archived_spans(moto: MotoS3, bucket: str, topic: str, partition: int) -> list[tuple[int, int]]:
    """(base, last) of every segment object of the partition in the bucket, whether a manifest
    names it or not."""
    spans = []
    for key in moto.objects(bucket):
        parts = key.split("/")
        if len(parts) >= 4 and parts[-4] == topic and parts[-2] == str(partition):
            span = keys.parse_segment_name(key)
            if span is not None and key.endswith(keys.SEGMENT_SUFFIX):
                spans.append(span)
    return sorted(spans)


def read_until(bootstrap: str, topic: str, end: int, isolation: str) -> list[bytes]:
    """Values of partition 0 from offset 0 until the consumer's position reaches ``end`` (no
    record is produced: for a read replica, which refuses writes)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "lso-archive-reader",
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "auto.offset.reset": "error"})
    out: list[bytes] = []
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 60
        while c.position([TopicPartition(topic, 0)])[0].offset < end:
            assert time.monotonic() < deadline, (len(out), end)
            for msg in c.consume(num_messages=500, timeout=0.5):
                assert msg.error() is None, msg.error()
                out.append(bytes(msg.value() or b""))
    finally:
        c.close()
    return out


def alter_topic(bootstrap: str, topic: str, **configs: str) -> None:
    resource = ConfigResource(
        ResourceType.TOPIC, topic,
        incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
            for k, v in configs.items()
        ],
    )
    client = ops.admin(bootstrap)  # kept alive until the futures resolve
    for future in client.incremental_alter_configs([resource]).values():
        future.result(30)


def open_transaction_with_traffic(
    broker: BrokerProcess, topic: str, partition: int = 0
) -> tuple[Any, int, list[bytes], list[bytes]]:
    """Plain records, then a transaction left open (returned with its first offset) while
    other transactions commit and abort and plain records roll several segments past it.
    Returns (open producer, its first offset, committed values so far, every value so far)."""
    bootstrap = broker.bootstrap
    before = values("before", 30)
    plain_send(bootstrap, topic, partition, before)
    first = list_offsets(broker.address, topic, partition, isolation=0)
    held = txn_producer(bootstrap, f"{topic}-{partition}-held")
    held.begin_transaction()
    opened = values("open", 5)
    txn_send(held, topic, partition, opened)
    committed, everything = list(before), before + opened
    short = txn_producer(bootstrap, f"{topic}-{partition}-short")
    for round_ in range(6):
        short.begin_transaction()
        vs = values(f"short{round_}", 8)
        txn_send(short, topic, partition, vs)
        everything += vs
        if round_ % 3 == 2:
            short.abort_transaction(30)
        else:
            short.commit_transaction(30)
            committed += vs
    after = values("after", 60)
    plain_send(bootstrap, topic, partition, after)
    return held, first, committed + after, everything + after


def test_an_open_transaction_holds_the_archive_until_it_ends(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    broker = broker_factory(settings(moto_s3, bucket, **{
        "tiering.segment_max_upload_interval_ms": "1000",
    }))
    ops.create_topic(broker.bootstrap, topic_name, 1, SMALL)
    held, first, committed, everything = open_transaction_with_traffic(broker, topic_name)
    report = settled(broker, topic_name)
    hw = report["high_watermark"]
    assert hw > first + 100  # several sealed segments past its first offset
    assert report["last_uploaded_offset"] < first, report
    spans = archived_spans(moto_s3, bucket, topic_name, 0)
    assert spans and all(last < first for _, last in spans), (first, spans)
    # Held back, not stuck: reported as waiting for the LSO; health stays ok.
    assert report["last_stable_offset"] == first
    assert report["uploads_waiting_for_lso"] >= 2 and report["last_error"] is None
    assert report["blocked"] is None
    status, doc = health(broker.admin_port)
    assert status == 200 and doc["tiering"]["status"] == "ok", doc
    assert doc["tiering"]["upload_waiting_offsets"] >= hw - first - 1

    held.commit_transaction(30)
    committed[30:30] = values("open", 5)  # its records sit right after the first plain ones
    report = caught_up(broker, topic_name)
    assert report["uploads_waiting_for_lso"] == 0
    local_answer = drain(broker.bootstrap, topic_name, [0])[0]
    assert local_answer == committed
    everything_local = drain(broker.bootstrap, topic_name, [0], "read_uncommitted")[0]
    assert everything_local == everything

    # The local copy of the transaction goes; the same answers come from the bucket.
    caught_up(broker, topic_name)
    alter_topic(broker.bootstrap, topic_name, **{"local.retention.bytes": "16384"})
    wait_until("the local copy to be trimmed past the transactions",
               lambda: partition_report(broker, topic_name)["local_start_offset"] > first + 60,
               timeout=60)
    assert drain(broker.bootstrap, topic_name, [0])[0] == local_answer
    assert drain(broker.bootstrap, topic_name, [0], "read_uncommitted")[0] == everything_local


def test_a_read_replica_never_shows_an_open_transaction(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    origin = broker_factory(settings(moto_s3, bucket, "origin", **{
        "tiering.segment_max_upload_interval_ms": "1000",
    }))
    replica = broker_factory(settings(moto_s3, bucket, "replica-b"))
    ops.create_topic(origin.bootstrap, topic_name, 1, SMALL)
    held, first, committed, everything = open_transaction_with_traffic(origin, topic_name)
    end = settled(origin, topic_name)["last_uploaded_offset"] + 1

    ops.create_topic(replica.bootstrap, topic_name, 1,
                     {"remote.readreplica": f"s3://{bucket}/origin"})
    wait_until("the replica to serve the archive",
               lambda: ops.watermarks(replica.bootstrap, topic_name)[1] == end, timeout=30)
    assert list_offsets(replica.address, topic_name, 0, isolation=1) == end
    seen = read_until(replica.bootstrap, topic_name, end, "read_committed")
    assert seen == committed[: len(seen)] and not any(v.startswith(b"open-") for v in seen)
    assert len(seen) >= 10
    assert read_until(replica.bootstrap, topic_name, end, "read_uncommitted") == everything[:end]

    held.abort_transaction(30)
    hw = caught_up(origin, topic_name)["high_watermark"]
    wait_until("the replica to sync the rest",
               lambda: ops.watermarks(replica.bootstrap, topic_name)[1] == hw, timeout=30)
    assert read_until(replica.bootstrap, topic_name, hw, "read_committed") == committed
    assert read_until(origin.bootstrap, topic_name, hw, "read_committed") == committed


def test_restore_never_serves_a_transaction_undecided_in_the_archive(
    moto_s3: MotoS3, tmp_path, topic_name: str  # noqa: ANN001
) -> None:
    """Partition 0: a transaction still open when the broker dies. Partition 1: a transaction
    aborted, its ABORT marker still in the (unarchived) active segment, its records in sealed
    segments below the LSO: archiving those would serve them as committed after a restore."""
    bucket = moto_s3.new_bucket()
    conf = settings(moto_s3, bucket)
    broker = BrokerProcess(tmp_path / "data", conf, log_path=tmp_path / "broker.log")
    broker.start()
    try:
        ops.create_topic(broker.bootstrap, topic_name, 2, SMALL)
        _held, first0, _, everything0 = open_transaction_with_traffic(broker, topic_name, 0)

        before1 = values("p1-before", 30)
        plain_send(broker.bootstrap, topic_name, 1, before1)
        first1 = list_offsets(broker.address, topic_name, 1, isolation=0)
        doomed = txn_producer(broker.bootstrap, f"{topic_name}-doomed")
        doomed.begin_transaction()
        txn_send(doomed, topic_name, 1, values("aborted", 5))
        plain_send(broker.bootstrap, topic_name, 1, values("p1-after", 40))
        doomed.abort_transaction(30)
        wait_stable(broker.address, topic_name, 1)  # the marker follows the EndTxn answer

        for p in (0, 1):
            settled(broker, topic_name, p)
        spans = [archived_spans(moto_s3, bucket, topic_name, p) for p in (0, 1)]

        def metadata_archived() -> bool:
            import json
            import urllib.request

            url = f"http://127.0.0.1:{broker.admin_port}/v1/cluster/archive"
            with urllib.request.urlopen(url, timeout=5) as resp:
                status = json.loads(resp.read())
            return not status["metadata"]["pending"] and not status["offsets"]["pending"]

        wait_until("the cluster archive to be stored", metadata_archived, timeout=30)
        broker.kill9()
    finally:
        broker.close()

    shutil.rmtree(tmp_path / "data")
    cmd = [sys.executable, "-m", "streamd", "restore", "--set", f"data_dir={tmp_path / 'data'}"]
    for key, value in conf.items():
        cmd += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    # Exit 3: the offsets the broker never archived (its tail, the open transaction's) are
    # reported as lost.
    assert done.returncode == 3 and "never archived" in done.stdout, (done.stdout, done.stderr)
    restored = BrokerProcess(tmp_path / "data", conf, log_path=tmp_path / "restored.log")
    restored.start()
    try:
        ends = [ops.watermarks(restored.bootstrap, topic_name, p)[1] for p in (0, 1)]
        # No producer state, no coordinator state: the restored partitions start stable.
        assert [list_offsets(restored.address, topic_name, p, isolation=1) for p in (0, 1)] == ends
        got = drain(restored.bootstrap, topic_name, [0, 1])
        undecided = [v[:12] for p in (0, 1) for v in got[p]
                     if v.startswith((b"open-", b"aborted-"))]
        assert not undecided, undecided
        assert 0 < ends[0] <= first0 and 0 < ends[1] <= first1, (ends, first0, first1)
        assert got[0] == everything0[: ends[0]]
        assert got[1] == before1[: ends[1]]
        assert drain(restored.bootstrap, topic_name, [0, 1], "read_uncommitted") == got
        # Nothing at or above either transaction's first offset ever reached the bucket.
        for p, first in ((0, first0), (1, first1)):
            assert spans[p] and all(last < first for _, last in spans[p]), (p, first, spans[p])
    finally:
        restored.close()
