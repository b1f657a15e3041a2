"""read_committed replay of a tiered topic from the bucket (issue 16).

Transactions that commit and abort, one of them open across several segments while others
commit, fill a tiered topic with small segments. Once the archive holds most of it and the
local copy is trimmed, read_committed consumers (confluent-kafka, aiokafka) replaying from
offset 0 get exactly the committed records, in order, as read_uncommitted consumers get
everything. Then the broker's data directory is deleted and ``streamd restore`` rebuilds it
from the bucket alone: the same replay still skips every aborted record.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.support import ops
from tests.support.broker import REPO_ROOT, BrokerProcess
from tests.support.moto import MotoS3, storage_report, wait_partition, wait_until
from tests.support.txn import drain, plain_produce, txn_producer

pytestmark = [pytest.mark.streamd_only]

TIERED = {
    "remote.storage.enable": "true",
    "segment.bytes": "32768",
    "local.retention.bytes": "32768",
    "segment.ms": "1500",
}


def fill(bootstrap: str, topic: str) -> tuple[list[bytes], list[bytes]]:
    """(committed values, every value) in log order."""
    long = txn_producer(bootstrap, f"{topic}-long")
    short = txn_producer(bootstrap, f"{topic}-short")
    committed: list[bytes] = []
    everything: list[bytes] = []
    pad = b"." * 900

    def send(p, tag: str, n: int) -> list[bytes]:  # noqa: ANN001
        vs = [f"{tag}-{i}".encode() + pad for i in range(n)]
        for v in vs:
            p.produce(topic, v, partition=0)
        assert p.flush(30) == 0
        everything.extend(vs)
        return vs

    long.begin_transaction()
    doomed = send(long, "long-aborted-a", 5)
    for round_ in range(30):
        short.begin_transaction()
        vs = send(short, f"short{round_}", 8)
        if round_ % 3 == 2:
            short.abort_transaction(30)
        else:
            short.commit_transaction(30)
            committed.extend(vs)
        if round_ == 12:
            doomed += send(long, "long-aborted-b", 5)
    long.abort_transaction(30)  # its marker lands many segments after its first record
    assert doomed
    plain_produce(bootstrap, topic, 0, [b"plain-tail"])
    committed.append(b"plain-tail")
    everything.append(b"plain-tail")
    return committed, everything


def aiokafka_read_committed(bootstrap: str, topic: str, last: bytes) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> list[bytes]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                             auto_offset_reset="earliest", group_id=None)
        await c.start()
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 60
            while last not in got:
                assert time.monotonic() < deadline, len(got)
                batches = await c.getmany(timeout_ms=500)
                got += [m.value for ms in batches.values() for m in ms]
        finally:
            await c.stop()
        return got[: got.index(last) + 1]

    return asyncio.run(run())


def test_read_committed_replay_from_the_bucket_and_after_restore(
    moto_s3: MotoS3, tmp_path, topic_name  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    settings = moto_s3.broker_settings(bucket) | {
        "tiering.upload_interval_ms": "250",
        "tiering.offsets_archive_interval_ms": "300",
        "log.housekeeping_interval_ms": "250",
        # two 32 KiB segments per object: their transaction indexes are archived together
        "tiering.merge_target_bytes": "65536",
    }
    broker = BrokerProcess(tmp_path / "data", settings, log_path=tmp_path / "broker.log")
    broker.start()
    try:
        ops.create_topic(broker.bootstrap, topic_name, 1, TIERED)
        committed, everything = fill(broker.bootstrap, topic_name)
        report = wait_partition(
            broker, topic_name, "most of the partition archived and trimmed locally",
            # the long transaction holds every upload until it ends (nothing of an open
            # transaction is archived), then its segments go in merged pairs
            lambda r: r["local_start_offset"] > 200 and r["remote_segments"] >= 3,
        )
        assert report["local_start_offset"] < report["high_watermark"]
        assert drain(broker.bootstrap, topic_name, [0]) == {0: committed}
        assert aiokafka_read_committed(broker.bootstrap, topic_name, b"plain-tail") == committed
        assert drain(broker.bootstrap, topic_name, [0], "read_uncommitted") == {0: everything}
        txn_objects = [k for k in moto_s3.objects(bucket) if k.endswith(".txnindex")]
        assert txn_objects, "aborted transactions travel with their archived segments"

        def archived() -> bool:
            part = storage_report(broker.admin_port, topic_name)["partitions"][0]
            return bool(part["last_uploaded_offset"] == part["high_watermark"] - 1)

        wait_until("everything archived", archived, timeout=40)
        broker.stop()
    finally:
        broker.close()

    shutil.rmtree(tmp_path / "data")
    cmd = [sys.executable, "-m", "streamd", "restore", "--set", f"data_dir={tmp_path / 'data'}"]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    restored = BrokerProcess(tmp_path / "data", settings, log_path=tmp_path / "restored.log")
    restored.start()
    try:
        low, high = ops.watermarks(restored.bootstrap, topic_name)
        assert low == 0 and high > 0
        assert drain(restored.bootstrap, topic_name, [0]) == {0: committed}
    finally:
        restored.close()
