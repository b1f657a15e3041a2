"""Log compaction with real clients against a real broker (issue 17's done-when list).

The broker runs with a short cleaner backoff and housekeeping interval so that the segments
roll (segment.ms) and get cleaned within seconds; everything else is the default.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_cli import Cli
from tests.support import admin_http
from tests.support.broker import BrokerProcess
from tests.support.ops import consumer, create_topic, producer, watermarks
from tests.support.txn import txn_producer

pytestmark = pytest.mark.streamd_only

FAST = {"log.cleaner.backoff_ms": "200", "log.housekeeping_interval_ms": "200"}
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.bytes": "16384",
    "segment.ms": "1000",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "1000",
}


def compaction_status(broker: BrokerProcess, topic: str) -> dict[str, Any]:
    url = f"http://{broker.host}:{broker.admin_port}/v1/topics/{topic}/compaction"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def produce_rows(
    bootstrap: str, topic: str, rows: list[tuple[bytes, bytes | None]], **extra: object
) -> list[int]:
    """Produce (key, value) rows in order; a None value is a tombstone. Returns offsets."""
    prod = producer(bootstrap, **{"linger.ms": 5, **extra})
    offsets: list[int] = [-1] * len(rows)
    errors: list[str] = []

    def on_delivery(index: int):  # noqa: ANN202
        def callback(err, msg) -> None:  # noqa: ANN001
            if err is not None:
                errors.append(f"{index}: {err}")
            else:
                offsets[index] = msg.offset()

        return callback

    for i, (key, value) in enumerate(rows):
        while True:
            try:
                prod.produce(topic, key=key, value=value, partition=0, on_delivery=on_delivery(i))
                break
            except BufferError:
                prod.poll(0.05)
        prod.poll(0)
    assert prod.flush(60) == 0
    assert not errors, errors[:5]
    return offsets


def read_all(
    bootstrap: str, topic: str, isolation: str = "read_uncommitted"
) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record from offset 0 up to the high watermark, as a consumer sees it. A compacted
    log may end in a gap or an empty batch, so the end is the consumer's end-of-partition
    event (its fetch position reached the high watermark), not the last record's offset."""
    _, high = watermarks(bootstrap, topic)
    out: list[tuple[int, bytes | None, bytes | None]] = []
    c = consumer(bootstrap, **{"enable.partition.eof": True, "isolation.level": isolation})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for msg in c.consume(num_messages=1000, timeout=0.5):
                error = msg.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= high:
                        return out
                    continue
                if error is not None:
                    raise AssertionError(error)
                out.append((msg.offset(), msg.key(), msg.value()))
        raise AssertionError(f"did not reach offset {high}: at {out[-1][0] if out else None}")
    finally:
        c.close()


def state_of(records: list[tuple[int, bytes | None, bytes | None]]) -> dict[bytes, bytes]:
    """What a key-value store rebuilds from the log: last value per key, tombstones delete."""
    state: dict[bytes, bytes] = {}
    for _, key, value in records:
        assert key is not None
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


def history(
    keys: int, versions: int, seed: int = 7, pad: int = 40
) -> list[tuple[bytes, bytes | None]]:
    rng = random.Random(seed)
    rows: list[tuple[bytes, bytes | None]] = []
    for v in range(versions):
        order = list(range(keys))
        rng.shuffle(order)
        rows += [(b"key-%03d" % k, b"v%03d-%03d-" % (k, v) + rng.randbytes(pad)) for k in order]
    return rows


def wait_compacted(
    bootstrap: str, topic: str, expected: dict[bytes, bytes], timeout: float
) -> list[tuple[int, bytes | None, bytes | None]]:
    """Read from offset 0 until the log holds exactly one record per live key."""
    deadline = time.monotonic() + timeout
    records: list[tuple[int, bytes | None, bytes | None]] = []
    while time.monotonic() < deadline:
        records = read_all(bootstrap, topic)
        if len(records) == len(expected) and state_of(records) == expected:
            return records
        time.sleep(0.5)
    raise AssertionError(
        f"not compacted after {timeout}s: {len(records)} records for {len(expected)} live keys"
    )


def test_compaction_keeps_one_record_per_live_key_with_gaps(broker_factory, topic_name) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory(FAST)
    create_topic(broker.bootstrap, topic_name, config=COMPACTED)
    rows = history(100, 50)
    rows += [(b"key-%03d" % k, None) for k in range(0, 100, 10)]
    offsets = produce_rows(broker.bootstrap, topic_name, rows)
    assert offsets == list(range(len(rows)))
    expected = state_of([(0, k, v) for k, v in rows])
    assert len(expected) == 90
    records = wait_compacted(broker.bootstrap, topic_name, expected, timeout=30)
    got = [o for o, _, _ in records]
    assert got == sorted(set(got)), "offsets increase"
    assert got[-1] - got[0] + 1 > len(got), "offsets keep their gaps, they are not rewritten"
    last = {k: i for i, (k, _) in enumerate(rows)}
    assert all(last[k] == o for o, k, _ in records if k is not None), "latest offset per key"
    assert not any(v is None for _, _, v in records), "no tombstone left"
    assert watermarks(broker.bootstrap, topic_name)[1] == len(rows), "the log end never moves"
    status = compaction_status(broker, topic_name)["partitions"][0]
    assert status["last_cleaning"]["error"] is None
    cli = Cli(broker)
    (part,) = cli.json("topic", "describe", topic_name)["partitions"]
    assert part["dirty_ratio"] == 0.0 and part["last_cleaned"] is not None
    assert part["cleaning"]["last"]["records_written"] < part["cleaning"]["last"]["records_read"]
    text = cli.ok("topic", "describe", topic_name)
    assert "dirty-ratio" in text.lower() and "last-cleaned" in text.lower()
    reply = admin_http.get(broker.admin_port, "/metrics")
    assert reply.status == 200
    samples = {
        (s.name, s.labels.get("topic")): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }
    assert samples[("streamd_log_cleaner_passes_total", None)] >= 1
    read = samples[("streamd_log_cleaner_read_bytes_total", None)]
    assert read > samples[("streamd_log_cleaner_written_bytes_total", None)] > 0
    assert samples[("streamd_log_cleaner_pass_seconds_total", None)] > 0
    # The last pass may only have dropped expired tombstones (an empty key map).
    assert 0 <= samples[("streamd_log_cleaner_key_map_fill_ratio", None)] <= 1
    assert samples[("streamd_log_cleaner_dirty_ratio", topic_name)] == 0.0


def test_a_record_without_key_is_refused_by_a_compacted_topic(broker_factory, topic_name) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory(FAST)
    create_topic(broker.bootstrap, topic_name, config=COMPACTED)
    plain = topic_name + "-plain"
    create_topic(broker.bootstrap, plain)
    prod = producer(broker.bootstrap)
    results: dict[str, Any] = {}

    def record(name: str):  # noqa: ANN202
        def callback(err, msg) -> None:  # noqa: ANN001
            results[name] = err

        return callback

    for topic, key, name in (
        (topic_name, None, "nokey"),
        (plain, None, "plain"),
        (topic_name, b"k", "keyed"),
    ):
        prod.produce(topic, key=key, value=b"v", partition=0, on_delivery=record(name))
        assert prod.flush(30) == 0
    assert results["nokey"] is not None
    assert results["nokey"].code() == KafkaError.INVALID_RECORD
    assert results["plain"] is None and results["keyed"] is None
    assert [k for _, k, _ in read_all(broker.bootstrap, topic_name)] == [b"k"]


def test_a_key_value_store_rebuilds_the_same_state_before_and_after_compaction(
    broker_factory,
    topic_name,  # type: ignore[no-untyped-def]
) -> None:
    broker = broker_factory(FAST)
    create_topic(broker.bootstrap, topic_name, config=COMPACTED)
    rows = history(60, 20, seed=3) + [(b"key-%03d" % k, None) for k in range(0, 60, 7)]
    rows += [(b"key-%03d" % k, b"reborn-%d" % k) for k in range(0, 60, 14)]
    produce_rows(broker.bootstrap, topic_name, rows)
    before = state_of(read_all(broker.bootstrap, topic_name))
    assert before == state_of([(0, k, v) for k, v in rows])
    broker.restart()
    assert state_of(read_all(broker.bootstrap, topic_name)) == before
    wait_compacted(broker.bootstrap, topic_name, before, timeout=30)
    broker.restart()
    assert state_of(read_all(broker.bootstrap, topic_name)) == before
    broker.restart(hard=True)
    records = read_all(broker.bootstrap, topic_name)
    assert state_of(records) == before and len(records) == len(before)


def test_kill_9_during_compaction_loses_no_latest_value(broker_factory, topic_name) -> None:  # type: ignore[no-untyped-def]
    settings = {**FAST, "log.cleaner.io_max_bytes_per_second": "1000000"}
    broker = broker_factory(settings)
    create_topic(broker.bootstrap, topic_name, config={**COMPACTED, "segment.bytes": "131072"})
    rng = random.Random(11)
    rows: list[tuple[bytes, bytes | None]] = []
    kills = 0
    for round_ in range(4):
        batch = history(150, 8, seed=round_, pad=1000)
        if round_ % 2:
            batch += [(b"key-%03d" % k, None) for k in rng.sample(range(150), 10)]
        produce_rows(broker.bootstrap, topic_name, batch)
        rows += batch
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if compaction_status(broker, topic_name)["partitions"][0]["cleaning_now"]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("no cleaning pass started")
        time.sleep(rng.uniform(0.0, 1.5))
        broker.restart(hard=True)
        kills += 1
        assert state_of(read_all(broker.bootstrap, topic_name)) == state_of(
            [(0, k, v) for k, v in rows]
        )
    assert kills == 4
    expected = state_of([(0, k, v) for k, v in rows])
    wait_compacted(broker.bootstrap, topic_name, expected, timeout=60)


@pytest.mark.parametrize("step", ["commit", "install"])
def test_a_crash_inside_a_swap_is_completed_by_recovery(broker_factory, topic_name, step) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory({**FAST, "log.cleaner.debug.crash_at": step})
    create_topic(broker.bootstrap, topic_name, config=COMPACTED)
    rows = [(b"static-%03d" % i, b"s" * 100) for i in range(200)] + history(100, 20, seed=5)
    produce_rows(broker.bootstrap, topic_name, rows)
    assert broker.proc is not None
    assert broker.proc.wait(30) == 99, "the broker stops inside its first swap"
    assert f"crash_at={step}" in broker.log_text()
    broker.settings.pop("log.cleaner.debug.crash_at")
    broker.start()
    expected = state_of([(0, k, v) for k, v in rows])
    assert state_of(read_all(broker.bootstrap, topic_name)) == expected
    if step == "commit":
        assert "completing the swap" in broker.log_text()
    partition_dir = broker.topics_dir / topic_name / "0"
    leftovers = [p.name for p in partition_dir.iterdir() if p.suffix in (".swap", ".deleted")]
    assert leftovers == []
    wait_compacted(broker.bootstrap, topic_name, expected, timeout=30)


def test_transactions_on_a_compacted_topic(broker_factory, topic_name) -> None:  # type: ignore[no-untyped-def]
    """Aborted records are removed by the cleaner (read_uncommitted no longer sees them either),
    committed ones are compacted like any other; read_committed state never changes."""
    broker = broker_factory(FAST)
    create_topic(broker.bootstrap, topic_name, config=COMPACTED)
    p = txn_producer(broker.bootstrap, f"{topic_name}-tx")

    def txn(rows: list[tuple[bytes, bytes]], commit: bool) -> None:
        p.begin_transaction()
        for key, value in rows:
            p.produce(topic_name, key=key, value=value, partition=0)
        if commit:
            p.commit_transaction(30)
        else:
            assert p.flush(30) == 0
            p.abort_transaction(30)

    keys = [b"k%02d" % i for i in range(20)]
    txn([(k, b"v1") for k in keys], commit=True)
    txn([(k, b"aborted") for k in keys[:10]], commit=False)
    txn([(k, b"v3") for k in keys[10:]], commit=True)
    pad = history(30, 20, seed=9)
    produce_rows(broker.bootstrap, topic_name, pad)
    expected = {k: b"v1" for k in keys[:10]} | {k: b"v3" for k in keys[10:]}
    expected |= state_of([(0, k, v) for k, v in pad])
    assert state_of(read_all(broker.bootstrap, topic_name, "read_committed")) == expected
    deadline = time.monotonic() + 30
    while True:
        view = read_all(broker.bootstrap, topic_name)
        if len(view) == len(expected) and state_of(view) == expected:
            break
        assert time.monotonic() < deadline, f"not compacted: {len(view)} records"
        time.sleep(0.5)
    assert b"aborted" not in {v for _, _, v in view}
    committed = read_all(broker.bootstrap, topic_name, "read_committed")
    assert committed == view, "read_committed and read_uncommitted agree once aborts are gone"
