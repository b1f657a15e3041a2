"""Round trip through the broker with each real client library and each compression codec.

For every (client, codec): create a topic with that client's admin API, produce a few
thousand records with keys, headers and explicit CreateTime timestamps to known partitions,
then read every partition back and require byte-identical keys, values and headers, the
producer's order, dense offsets that match the acknowledgements, and correct seeks by offset
and by timestamp.

Consumers use manual assignment and producers run without idempotence: consumer groups and
InitProducerId arrive with the group coordinator.
"""

from __future__ import annotations

import random
import time
import zlib
from collections import defaultdict

import pytest

from tests.support.broker import BrokerProcess
from tests.support.clients import CODECS, DRIVERS, Ack, Got, Rec

RECORDS = 3000
PARTITIONS = 3


def make_records(seed: int, now_ms: int) -> list[Rec]:
    """Deterministic, varied records: null keys/values, binary and repeated headers, sizes
    from empty to a few KiB, compressible and incompressible payloads. Timestamps increase
    strictly (1 ms apart) and sit an hour in the past, well inside default retention."""
    rng = random.Random(seed)
    base_ts = now_ms - 3_600_000
    records = []
    for i in range(RECORDS):
        key = None if i % 97 == 5 else b"k\x00\xff" + str(i).encode()
        if i % 499 == 0:
            value = None
        elif i % 3 == 0:
            value = rng.randbytes(rng.randint(0, 300))
        elif i % 250 == 1:
            value = rng.randbytes(4096)
        else:
            value = f"record-{i}-".encode() + b"abcdefgh" * rng.randint(0, 40)
        headers: tuple[tuple[str, bytes], ...]
        if i % 5 == 0:
            headers = ()
        else:
            headers = (
                ("idx", str(i).encode()),
                ("bin", rng.randbytes(8)),
                ("dup", b"1"),
                ("dup", b"2"),
                ("empty", b""),
            )
        records.append(Rec(i % PARTITIONS, key, value, headers, base_ts + i))
    return records


def by_partition(records: list[Rec], acks: list[Ack]) -> dict[int, list[tuple[Ack, Rec]]]:
    out: dict[int, list[tuple[Ack, Rec]]] = defaultdict(list)
    for ack, rec in zip(acks, records, strict=True):
        out[rec.partition].append((ack, rec))
    for entries in out.values():
        entries.sort(key=lambda e: e[0].offset)
    return out


def same(got: Got, rec: Rec) -> bool:
    return (got.key, got.value, got.headers, got.timestamp) == (
        rec.key,
        rec.value,
        rec.headers,
        rec.timestamp,
    )


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("client", sorted(DRIVERS))
def test_roundtrip(broker: BrokerProcess, topic_name: str, client: str, codec: str) -> None:
    driver = DRIVERS[client](broker.bootstrap)
    driver.create_topic(topic_name, PARTITIONS)
    records = make_records(
        seed=zlib.crc32(f"{client}/{codec}".encode()), now_ms=int(time.time() * 1000)
    )

    acks = driver.produce(topic_name, records, codec)

    for ack, rec in zip(acks, records, strict=True):
        assert ack.partition == rec.partition
    parts = by_partition(records, acks)
    assert sorted(parts) == list(range(PARTITIONS))
    for partition, entries in parts.items():
        offsets = [a.offset for a, _ in entries]
        assert offsets == list(range(len(entries))), f"p{partition}: acked offsets not dense"
        order = [r.timestamp for _, r in entries]
        assert order == sorted(order), f"p{partition}: broker reordered one producer's records"

    for partition, entries in parts.items():
        got = driver.consume(topic_name, partition, 0, len(entries))
        assert [g.offset for g in got] == list(range(len(entries))), f"p{partition} offsets"
        for g, (ack, rec) in zip(got, entries, strict=True):
            assert g.partition == partition
            assert same(g, rec), f"p{partition}@{ack.offset}: got {g!r}, produced {rec!r}"

    partition, entries = 1, parts[1]
    mid = len(entries) // 2
    got = driver.consume(topic_name, partition, mid, len(entries) - mid)
    assert [g.offset for g in got] == list(range(mid, len(entries)))
    assert same(got[0], entries[mid][1])

    target_ack, target_rec = entries[mid]
    previous_rec = entries[mid - 1][1]
    assert driver.offset_for_time(topic_name, partition, target_rec.timestamp) == target_ack.offset
    between = previous_rec.timestamp + 1
    assert driver.offset_for_time(topic_name, partition, between) == target_ack.offset
    first_rec = entries[0][1]
    assert driver.offset_for_time(topic_name, partition, first_rec.timestamp - 60_000) == 0
    last_rec = entries[-1][1]
    assert driver.offset_for_time(topic_name, partition, last_rec.timestamp + 1) is None
