"""The worker's record loop without sockets: batches in, transform(), batches out."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from streamd.transform import InputRecord, Record
from streamd.transforms.partitioner import KeyPartitioner, murmur2
from streamd.transforms.runtime import Applier, Outputs, StopAt


def batch(records: list[tuple[bytes | None, bytes | None]], base: int = 0) -> Any:
    b = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for i, (key, value) in enumerate(records):
        b.append(i, 1_700_000_000_000 + i, key, value, [("h", b"%d" % i)])
    raw = bytearray(b.build())
    raw[0:8] = base.to_bytes(8, "big")
    return DefaultRecordBatch(bytes(raw))


def output(outputs: Outputs) -> dict[tuple[str, int], list[Any]]:
    got: dict[tuple[str, int], list[Any]] = {}
    for topic, partition, batches in outputs.take():
        for builder, count in batches:
            builder.set_producer_state(1, 0, 0)
            recs = list(DefaultRecordBatch(bytes(builder.build())))
            assert len(recs) == count
            got.setdefault((topic, partition), []).extend(recs)
    return got


def applier(fn: Any, on_error: str = "stop", counts: dict[str, int] | None = None,
            dlq: bool = False) -> Applier:
    topics = ["out", "other"] + (["dead"] if dlq else [])
    counts = counts or {"out": 4, "other": 1, "dead": 2}
    outs = Outputs(topics, {t: counts[t] for t in topics})
    return Applier(fn, "in", topics, outs, on_error=on_error,
                   dead_letter=2 if dlq else None)


def test_import_does_not_load_the_broker() -> None:
    code = (
        "import sys, streamd.transform; "
        "bad = [m for m in sys.modules if m.startswith(('streamd.', 'kio', 'aiokafka')) "
        "and m != 'streamd.transform']; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.strip() == "[]"


def test_murmur2_is_kafkas() -> None:
    assert murmur2(b"21") == (-973932308) & 0xFFFFFFFF  # Kafka's UtilsTest vector
    for n in range(40):
        data = bytes(range(n))
        assert murmur2(data) == kafka_python_murmur2(data) & 0xFFFFFFFF
    parts = KeyPartitioner()
    assert parts.partition(b"21", 7) == ((-973932308) & 0x7FFFFFFF) % 7


def test_records_keep_order_partition_rules_and_timestamps() -> None:
    def fn(r: InputRecord) -> Any:
        return Record(key=r.key, value=r.value.upper(), headers=r.headers)

    a = applier(fn)
    keys = [b"k%d" % i for i in range(20)]
    a.apply(5, batch([(k, b"v%d" % i) for i, k in enumerate(keys)] + [(None, b"nokey")], 100))
    got = output(a.outputs)
    parts = KeyPartitioner()
    for i, k in enumerate(keys):
        recs = got[("out", parts.partition(k, 4))]
        assert any(r.key == k and r.value == b"V%d" % i for r in recs)
    keyless = got[("out", 5 % 4)][-1]
    assert (keyless.key, keyless.value) == (None, b"NOKEY")
    for recs in got.values():
        values = [int(r.value[1:]) for r in recs if r.key is not None]
        assert values == sorted(values)  # input order kept per output partition
    assert all(r.timestamp >= 1_700_000_000_000 for recs in got.values() for r in recs)
    assert a.records_in == 21


def test_identity_lists_drops_and_topics() -> None:
    def fn(r: InputRecord) -> Any:
        if r.value == b"drop":
            return None
        if r.value == b"two":
            return [r, Record(value="x", topic="other", headers=[("s", "str")])]
        return r

    a = applier(fn)
    a.apply(0, batch([(None, b"one"), (None, b"drop"), (None, b"two")]))
    got = output(a.outputs)
    assert [r.value for r in got[("out", 0)]] == [b"one", b"two"]
    assert [(r.value, r.headers) for r in got[("other", 0)]] == [(b"x", [("s", b"str")])]


def test_bad_returns_are_record_errors() -> None:
    seen = []
    a = applier(lambda r: {"value": 1} if r.offset == 1 else
                (Record(value=b"ok"), Record(value=3)) if r.offset == 2 else
                [Record(value=b"a"), Record(value=b"b", topic="nope")], on_error="skip")
    a.report = seen.append
    a.apply(0, batch([(None, b"0"), (None, b"1"), (None, b"2")]))
    assert output(a.outputs) == {}  # a failing record adds none of its outputs
    assert a.skipped == 3
    assert "topic 'nope' is not an output topic" in seen[0].error
    assert "returned dict" in seen[1].error
    assert "returned tuple" in seen[2].error


def test_stop_raises_at_the_failing_offset_after_the_good_records() -> None:
    def fn(r: InputRecord) -> Any:
        if r.value == b"bad":
            raise KeyError("boom")
        return r

    a = applier(fn, on_error="stop")
    with pytest.raises(StopAt) as info:
        a.apply(3, batch([(None, b"a"), (None, b"bad"), (None, b"c")], 40))
    assert (info.value.partition, info.value.offset) == (3, 41)
    assert "KeyError: 'boom'" in info.value.error
    assert [r.value for r in output(a.outputs)[("out", 3)]] == [b"a"]


def test_dead_letter_gets_the_original_record() -> None:
    a = applier(lambda r: 1 / 0 if r.value == b"bad" else r, on_error="dead-letter", dlq=True)
    a.apply(1, batch([(b"k", b"bad"), (None, b"fine")], 7))
    got = output(a.outputs)
    dead = got[("dead", KeyPartitioner().partition(b"k", 2))]
    assert [(r.key, r.value, r.headers) for r in dead] == [(b"k", b"bad", [("h", b"0")])]
    assert [r.value for r in got[("out", 1)]] == [b"fine"]
    assert a.dead_lettered == 1 and a.last_error is not None and a.last_error.offset == 7


def test_memory_error_is_not_a_record_error() -> None:
    def fn(r: InputRecord) -> Any:
        raise MemoryError

    with pytest.raises(MemoryError):
        applier(fn, on_error="skip").apply(0, batch([(None, b"x")]))


def test_large_output_spills_into_several_batches() -> None:
    a = applier(lambda r: [Record(value=b"x" * 300_000) for _ in range(7)])
    a.apply(0, batch([(None, b"one")]))
    taken = a.outputs.take()
    [(topic, partition, batches)] = taken
    assert (topic, partition) == ("out", 0)
    assert len(batches) >= 3 and sum(c for _, c in batches) == 7


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_compressed_input_batches(codec: int) -> None:
    b = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, 1 << 20)
    for i in range(50):
        b.append(i, 1_700_000_000_000, None, b"value-%d" % i, [])
    a = applier(lambda r: r)
    a.apply(0, DefaultRecordBatch(bytes(b.build())))
    assert [r.value for r in output(a.outputs)[("out", 0)]] == [b"value-%d" % i for i in range(50)]
