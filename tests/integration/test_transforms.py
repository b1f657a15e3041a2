"""Data transforms end to end: a real broker subprocess, its worker processes, moto's S3.

The exactly-once scenario of issue 19: a tiered input topic whose first 20,000 records are only
in the bucket; an uppercase transform deployed from earliest replays them through the remote
reader, then follows at least 5,000 live records (produced until the worker's kill is over);
kill -9 of the broker (mid-replay) and of the worker (mid-stream) leave every input record's
output exactly once, in input order per partition, as a ``read_committed`` reader sees it.
Then ``--on-error`` stop / skip / dead-letter.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.support import ops
from tests.support.moto import MotoS3, metric, metrics_text, storage_report, wait_until
from tests.support.transforms import (
    BAD_RECORD,
    ENABLED,
    UPPER,
    admin,
    caught_up,
    committed_total,
    deploy,
    describe,
    read_committed,
    wait_for,
)

pytestmark = [pytest.mark.streamd_only]

ARCHIVED = {
    "remote.storage.enable": "true",
    "segment.bytes": "65536",
    "segment.ms": "1000",
    "local.retention.bytes": "0",
}
"""Every sealed segment leaves local disk once archived; the active one rolls within 1 s."""


def produce_keyless(bootstrap: str, topic: str, start: int, count: int, parts: int) -> None:
    """Records ``rec-N`` for N in [start, start+count), N to partition N % parts, in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    errors: list[Any] = []
    for n in range(start, start + count):
        while True:
            try:
                producer.produce(
                    topic,
                    value=b"rec-%06d" % n,
                    partition=n % parts,
                    on_delivery=lambda err, msg: err and errors.append(err),
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]


def expected(total: int, parts: int) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {p: [] for p in range(parts)}
    for n in range(total):
        out[n % parts].append(b"REC-%06d" % n)
    return out


def values(got: dict[int, list[Any]]) -> dict[int, list[bytes]]:
    return {p: [r.value for r in recs] for p, recs in got.items()}


def test_replay_from_the_bucket_then_live_exactly_once_across_kill9(
    moto_s3: MotoS3, broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    broker = broker_factory(
        moto_s3.broker_settings(bucket)
        | ENABLED
        | {"tiering.upload_interval_ms": "250", "log.housekeeping_interval_ms": "250"}
    )
    src, dst, parts = f"{topic_name}-in", f"{topic_name}-out", 2
    ops.create_topic(broker.bootstrap, src, parts, ARCHIVED)
    ops.create_topic(broker.bootstrap, dst, parts)
    produce_keyless(broker.bootstrap, src, 0, 20_000, parts)

    def archived_only() -> bool:
        report = storage_report(broker.admin_port, src)["partitions"]
        return all(p["local_start_offset"] == 10_000 for p in report)

    wait_until("the first 20,000 records to be in the bucket only", archived_only, timeout=60)
    remote_reads = metric(metrics_text(broker.admin_port), "streamd_tiering_remote_reads_total")

    deploy(broker, "upper", UPPER, src, [dst], start="earliest", env={"DELAY_S": "0.0002"})
    mid = wait_for(broker, "upper", "commit some output", lambda d: committed_total(d) > 0)
    assert mid["status"] == "catching-up" and committed_total(mid) < 20_000, mid
    broker.kill9()  # mid-replay: output and positions of the open transaction are lost
    broker.start()
    wait_for(broker, "upper", "catch up with 20,000 records", lambda d: caught_up(d, 20_000))
    assert values(read_committed(broker.bootstrap, dst, parts)) == expected(20_000, parts)
    after = metric(metrics_text(broker.admin_port), "streamd_tiering_remote_reads_total")
    assert after > 0 and remote_reads == 0  # the replay read the bucket (fresh metrics: restart)

    # Live records keep arriving until the worker has been killed, so the kill is always
    # mid-stream: at least 5,000 of them, and more while the kill is under way.
    killed = threading.Event()
    produced = [20_000]

    def trickle() -> None:
        n = 20_000
        while n < 25_000 or not killed.is_set():
            produce_keyless(broker.bootstrap, src, n, 250, parts)
            n += 250
            produced[0] = n

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    doc = wait_for(
        broker, "upper", "commit live records", lambda d: committed_total(d) > 20_000
    )
    os.kill(doc["worker"]["pid"], signal.SIGKILL)  # mid-stream
    at_kill = produced[0]
    killed.set()
    feeder.join(120)
    assert not feeder.is_alive()
    live_end = produced[0]
    assert live_end >= 25_000 and live_end > at_kill, (at_kill, live_end)
    doc = wait_for(
        broker,
        "upper",
        f"catch up with {live_end} records",
        lambda d: caught_up(d, live_end) and d["status"] == "running",
    )
    assert doc["worker"]["restarts"] >= 1, doc
    assert values(read_committed(broker.bootstrap, dst, parts)) == expected(live_end, parts)

    produce_keyless(broker.bootstrap, src, live_end, 1_000, parts)
    total = live_end + 1_000
    wait_for(broker, "upper", f"catch up with {total} records", lambda d: caught_up(d, total))
    got = read_committed(broker.bootstrap, dst, parts)
    assert values(got) == expected(total, parts)


def test_on_error_stop_skip_and_dead_letter(broker_factory, topic_name: str) -> None:  # noqa: ANN001
    broker = broker_factory(ENABLED)
    src = f"{topic_name}-in"
    outs = {policy: f"{topic_name}-{policy}" for policy in ("stop", "skip", "dlq")}
    dlq = f"{topic_name}-dead"
    for t in (src, *outs.values(), dlq):
        ops.create_topic(broker.bootstrap, t, 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i, v in enumerate([b"a", b"b", b"bad", b"c", b"d"]):
        producer.produce(src, key=b"k%d" % i, value=v, headers=[("n", b"%d" % i)], partition=0)
    assert producer.flush(30) == 0

    deploy(broker, "stop", BAD_RECORD, src, [outs["stop"]], on_error="stop")
    deploy(broker, "skip", BAD_RECORD, src, [outs["skip"]], on_error="skip")
    deploy(broker, "dlq", BAD_RECORD, src, [outs["dlq"]], on_error=f"dead-letter={dlq}")

    stopped = wait_for(broker, "stop", "fail", lambda d: d["status"] == "failed")
    err = stopped["last_error"]
    assert (err["partition"], err["offset"]) == (0, 2), err
    assert "ValueError: cannot take this one" in err["message"], err
    assert stopped["partitions"][0]["committed_offset"] == 2
    assert [r.value for r in read_committed(broker.bootstrap, outs["stop"], 1)[0]] == [b"A", b"B"]

    skipped = wait_for(broker, "skip", "catch up", lambda d: caught_up(d, 5))
    assert skipped["records_skipped"] == 1 and skipped["last_error"]["offset"] == 2, skipped
    assert skipped["status"] == "running"
    got = read_committed(broker.bootstrap, outs["skip"], 1)[0]
    assert [r.value for r in got] == [b"A", b"B", b"C", b"D"]

    lettered = wait_for(broker, "dlq", "catch up", lambda d: caught_up(d, 5))
    assert lettered["records_dead_lettered"] == 1, lettered
    assert [r.value for r in read_committed(broker.bootstrap, outs["dlq"], 1)[0]] == [
        b"A", b"B", b"C", b"D"
    ]
    dead = read_committed(broker.bootstrap, dlq, 1)[0]
    assert [(r.key, r.value, r.headers) for r in dead] == [(b"k2", b"bad", (("n", b"2"),))]

    # A failed transform stays failed across a restart; a fixed redeploy continues at the
    # record it failed on.
    broker.restart()
    assert describe(broker, "stop")["status"] == "failed"
    deploy(broker, "stop", BAD_RECORD.replace('raise ValueError("cannot take this one")',
                                              "return None"), src, [outs["stop"]])
    wait_for(broker, "stop", "catch up", lambda d: caught_up(d, 5))
    got = read_committed(broker.bootstrap, outs["stop"], 1)[0]
    assert [r.value for r in got] == [b"A", b"B", b"C", b"D"]


def test_disabled_by_default(broker_factory, topic_name: str) -> None:  # noqa: ANN001
    broker = broker_factory()
    status, doc = admin(broker, "GET", "/v1/transforms")
    assert status == 409 and "transforms.enabled" in doc["error"]
    status, doc = admin(broker, "POST", "/v1/transforms", {"name": "x"})
    assert status == 409
