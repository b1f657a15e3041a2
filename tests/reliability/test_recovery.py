"""Startup recovery of a damaged log tail.

One broker writes a partition once (bulk batches spanning several segments of
`segment.bytes`, then a few single-record batches) and stops cleanly. Each test copies that
data_dir, damages the active segment (the `.log` with the largest base offset) or the index
files, and starts a broker on the copy: it must start, serve exactly the valid records,
give the next record offset = last valid + 1, and still hold all of it after another restart
(so the damage was cut away on disk, not just skipped in memory).

Producers run with acks=all and without idempotence; consumers use manual assignment:
idempotence and consumer groups arrive with the group coordinator.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from tests.conftest import BrokerFactory
from tests.support import ops
from tests.support.batches import batch_spans, build_batch
from tests.support.broker import BrokerProcess

pytestmark = pytest.mark.streamd_only

TOPIC = "recovery"
SEGMENT_BYTES = 1_048_576
BULK = 1300
TAIL = 5


@dataclass(frozen=True)
class Written:
    data_dir: Path
    values: list[bytes]
    timestamps: list[int]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Written]:
    base = tmp_path_factory.mktemp("recovery-source")
    broker = BrokerProcess(
        base / "data", {"defaults.segment.bytes": str(SEGMENT_BYTES)}, log_path=base / "log"
    )
    broker.start()
    try:
        ops.create_topic(broker.bootstrap, TOPIC, 1)
        rng = random.Random(7)
        bulk = [f"{i:06d}".encode() + rng.randbytes(994) for i in range(BULK)]
        tail = [f"tail-{i}".encode() for i in range(TAIL)]
        assert ops.produce(broker.bootstrap, TOPIC, bulk) == list(range(BULK))
        offsets = ops.produce(broker.bootstrap, TOPIC, tail, flush_each=True)
        assert offsets == list(range(BULK, BULK + TAIL))
        timestamps = timestamps_of(broker)
        assert broker.stop() == 0, broker.log_tail()
    finally:
        broker.close()
    yield Written(broker.data_dir, bulk + tail, timestamps)


def timestamps_of(broker: BrokerProcess) -> list[int]:
    c = ops.consumer(broker.bootstrap)
    out: list[int] = []
    try:
        c.assign([TopicPartition(TOPIC, 0, 0)])
        while len(out) < BULK + TAIL:
            for msg in c.consume(1000, timeout=5):
                assert msg.error() is None, msg.error()
                out.append(msg.timestamp()[1])
    finally:
        c.close()
    return out


def partition_dir(data_dir: Path) -> Path:
    return data_dir / "topics" / TOPIC / "0"


def segments(data_dir: Path) -> list[Path]:
    return sorted(partition_dir(data_dir).glob("*.log"))


def active_segment(data_dir: Path) -> Path:
    return segments(data_dir)[-1]


def last_batches(segment: Path) -> list[tuple[int, int, int, int]]:
    spans = batch_spans(segment.read_bytes())
    assert spans and spans[-1][1] == segment.stat().st_size, "could not walk the segment"
    return spans


def append(data: bytes) -> Callable[[Path], None]:
    def damage(data_dir: Path) -> None:
        with active_segment(data_dir).open("ab") as f:
            f.write(data)

    return damage


def truncate_to(
    position: Callable[[list[tuple[int, int, int, int]]], int],
) -> Callable[[Path], None]:
    def damage(data_dir: Path) -> None:
        segment = active_segment(data_dir)
        os.truncate(segment, position(last_batches(segment)))

    return damage


def remove_indexes(data_dir: Path) -> None:
    removed = [p for p in partition_dir(data_dir).iterdir() if p.suffix in (".index", ".timeindex")]
    assert removed, "no index files found"
    for p in removed:
        p.unlink()


def scramble_indexes(data_dir: Path) -> None:
    rng = random.Random(3)
    for p in partition_dir(data_dir).iterdir():
        if p.suffix in (".index", ".timeindex"):
            p.write_bytes(rng.randbytes(max(p.stat().st_size, 64)))


def bad_crc_batch() -> bytes:
    batch = bytearray(build_batch([b"phantom"], base_offset=BULK + TAIL))
    batch[17] ^= 0xFF
    return bytes(batch)


ALL = BULK + TAIL
CASES: dict[str, tuple[Callable[[Path], None], int]] = {
    "append-random-bytes": (append(random.Random(1).randbytes(1000)), ALL),
    "append-zeros": (append(b"\x00" * 4096), ALL),
    "append-batch-with-bad-crc": (append(bad_crc_batch()), ALL),
    "append-huge-length-header": (append(struct.pack(">qi", ALL, 2**31 - 1) + b"\x01" * 50), ALL),
    "append-half-a-valid-batch": (
        append(build_batch([b"half"] * 10, base_offset=ALL)[:40]),
        ALL,
    ),
    "cut-7-bytes": (truncate_to(lambda spans: spans[-1][1] - 7), ALL - 1),
    "cut-into-last-header": (truncate_to(lambda spans: spans[-1][0] + 20), ALL - 1),
    "cut-two-batches": (truncate_to(lambda spans: spans[-2][0] + 30), ALL - 2),
    "cut-at-batch-boundary": (truncate_to(lambda spans: spans[-1][0]), ALL - 1),
    "indexes-removed": (remove_indexes, ALL),
    "indexes-scrambled": (scramble_indexes, ALL),
}


def start_on_copy(broker_factory: BrokerFactory, written: Written) -> BrokerProcess:
    broker = broker_factory({"defaults.segment.bytes": str(SEGMENT_BYTES)}, start=False)
    shutil.copytree(written.data_dir, broker.data_dir)
    return broker


def test_source_spans_several_segments(written: Written) -> None:
    assert len(segments(written.data_dir)) >= 2, (
        f"{BULK} KiB with segment.bytes={SEGMENT_BYTES} left one segment: "
        f"{[p.name for p in segments(written.data_dir)]}"
    )
    for seg in segments(written.data_dir):
        assert seg.name == f"{int(seg.stem):020d}.log"


@pytest.mark.parametrize("case", list(CASES))
def test_recovers_valid_prefix(broker_factory: BrokerFactory, written: Written, case: str) -> None:
    damage, valid = CASES[case]
    broker = start_on_copy(broker_factory, written)
    damage(broker.data_dir)

    broker.start()

    got = ops.consume(broker.bootstrap, TOPIC)
    assert [m.offset for m in got] == list(range(valid))
    assert [m.value for m in got] == written.values[:valid]
    assert ops.watermarks(broker.bootstrap, TOPIC) == (0, valid)
    assert ops.produce(broker.bootstrap, TOPIC, [b"after-recovery"]) == [valid]

    c = ops.consumer(broker.bootstrap)
    try:
        probe = valid - 3
        (tp,) = c.offsets_for_times([TopicPartition(TOPIC, 0, written.timestamps[probe])], 15)
    finally:
        c.close()
    assert tp.offset == written.timestamps.index(written.timestamps[probe])

    assert broker.stop() == 0
    broker.start()
    again = ops.consume(broker.bootstrap, TOPIC)
    assert [m.offset for m in again] == list(range(valid + 1))
    assert again[-1].value == b"after-recovery"
    assert [m.value for m in again[:valid]] == written.values[:valid]
