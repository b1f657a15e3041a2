"""Read replicas in process: an origin (LogManager + TieringService) archiving into one
directory of a local bucket, a replica broker (its own LogManager, TieringService and
ReadReplicas) reading it, every tick and sync driven by hand.

Covers creation from the origin's archive (id, partition count, configs; the refusals),
byte-identical reads, following new uploads and the origin's total retention (a moved earliest
offset, never a storage error), a manifest going backwards, promotion (offsets continue,
archiving to the replica's own store, the origin's objects untouched), restart from local state
and the topic config itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamd.errors import ErrorCode, InvalidConfig, OffsetOutOfRange, StreamdError
from streamd.log.batch import validate_produce_batches
from streamd.log.manager import LogManager
from streamd.log.topic_config import TopicConfig
from streamd.tiering import keys
from streamd.tiering.cache import ChunkCache
from streamd.tiering.local_store import LocalStore
from streamd.tiering.manifest import dump_partition_manifest, load_partition_manifest
from streamd.tiering.readreplica import ReadReplicas, refusal, stores_overlap
from streamd.tiering.service import TieringService, TieringSettings
from streamd.tiering.store import open_store
from tests.unit.log.batches import simple_batch

TIERED = {
    "remote.storage.enable": "true",
    "segment.bytes": "4096",
    "index.interval.bytes": "512",
    "local.retention.bytes": "5000",
}
T0 = (time.time_ns() // 1_000_000) - 3_600_000


async def fill(logs: LogManager, topic: str, batches: int, partition: int = 0) -> None:
    plog = logs.partition(topic, partition)
    for i in range(batches):
        await plog.append(simple_batch(5, ts=T0 + 100 * i, value_size=120), now_ms=T0)


class Broker:
    """One side: a LogManager, its own store directory and TieringService (and replicas)."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.tmp = tmp
        self.url = f"file://{tmp / 'bucket' / name}"
        self.data = tmp / name
        self.logs = LogManager(self.data)
        self.logs.load()
        self.tiering: TieringService | None = None
        self.replicas: ReadReplicas | None = None
        self.moved: list[tuple[str, int]] = []

    async def open(self, *, replicas: bool = False) -> None:
        cache = ChunkCache(self.data / "cache", max_bytes=1 << 20, chunk_size=1024)
        self.tiering = TieringService(
            open_store(self.url),
            self.logs,
            cache,
            manifest_dir=self.data / "tiering" / "manifests",
            settings=TieringSettings(merge_target_bytes=0),
        )
        await self.tiering.start(schedule=False)
        if replicas:
            self.replicas = ReadReplicas(
                self.logs,
                cache,
                state_dir=self.data / "tiering" / "readreplicas",
                own_store=self.url,
                open_store=lambda url: open_store(url),
                on_moved=lambda t, p: self.moved.append((t, p)),
                on_promoted=self.tiering.on_topic_changed,
                own_archive_bytes=self.tiering.archived_bytes,
            )
            self.tiering.borrowed = self.replicas
            await self.replicas.start(schedule=False)

    async def tick(self) -> None:
        assert self.tiering is not None
        await self.tiering.tick()
        await self.logs.run_housekeeping()

    async def close(self) -> None:
        if self.replicas is not None:
            await self.replicas.close()
            self.replicas = None
        if self.tiering is not None:
            self.logs.tiering_veto = None
            await self.tiering.close()
            self.tiering = None
        await self.logs.close()

    async def reopen(self) -> None:
        await self.close()
        self.logs = LogManager(self.data)
        self.logs.load()
        await self.open(replicas=True)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Broker, Broker]]:
    origin, replica = Broker(tmp_path, "origin"), Broker(tmp_path, "replica")
    await origin.open()
    await replica.open(replicas=True)
    yield origin, replica
    await replica.close()
    await origin.close()


async def archived(
    origin: Broker, topic: str = "t", partitions: int = 1, batches: int = 60
) -> None:
    origin.logs.create_topic(topic, partitions, TIERED | {"retention.ms": "-1"})
    assert origin.tiering is not None
    await origin.tiering.on_topic_changed(origin.logs.get(topic))
    for p in range(partitions):
        await fill(origin.logs, topic, batches, p)
    await origin.tick()
    await origin.tick()  # the topic manifest and the cluster metadata are written by ticks


def manifest_of(side: Broker, topic: str = "t", partition: int = 0) -> Any:
    assert side.tiering is not None
    return side.tiering._states[(topic, partition)].manifest


async def replay(side: Broker, topic: str, start: int, end: int, max_bytes: int = 1500) -> bytes:
    """What consumers get for offsets ``[start, end)`` through the tiering service (remote
    below the local start, the local log above it)."""
    assert side.tiering is not None
    plog = side.logs.partition(topic, 0)
    out = bytearray()
    offset = start
    while offset < end:
        if offset < plog.log_start_offset:
            data = await side.tiering.read(topic, 0, offset, max_bytes, True)
        else:
            piece = plog.read(offset, max_bytes)
            assert piece is not None
            data = piece.read_bytes()
        headers = validate_produce_batches(data, 1 << 30)
        out += data
        offset = headers[-1].next_offset
    return bytes(out)


async def objects(store_url: str) -> dict[str, int]:
    store = open_store(store_url)
    try:
        return {o.key: o.size async for o in store.list("")}
    finally:
        await store.close()


async def test_a_replica_serves_every_archived_offset_byte_for_byte(
    pair: tuple[Broker, Broker],
) -> None:
    origin, replica = pair
    await archived(origin, partitions=2)
    assert replica.replicas is not None and replica.tiering is not None
    topic, count = await replica.replicas.create("t", None, {"remote.readreplica": origin.url})
    assert topic is not None and count == 2
    source = origin.logs.get("t")
    assert source is not None
    assert topic.topic_id == source.topic_id
    assert topic.overrides == {**source.overrides, "remote.readreplica": origin.url}
    for p in (0, 1):
        m = manifest_of(origin, partition=p)
        plog = replica.logs.partition("t", p)
        assert plog.high_watermark == m.last_uploaded_offset + 1
        assert plog.size_bytes == 0, "a replica keeps no record locally"
        assert replica.tiering.earliest_offset("t", p, plog) == m.remote_start_offset
        assert replica.tiering.latest_tiered_offset("t", p) == m.last_uploaded_offset
    end = manifest_of(origin).last_uploaded_offset + 1
    for max_bytes in (1, 1500, 1 << 20):
        assert await replay(replica, "t", 0, end, max_bytes) == await replay(
            origin, "t", 0, end, max_bytes
        )
    assert ("t", 0) in replica.moved and ("t", 1) in replica.moved
    for ts in (T0 - 1, T0 + 100 * 20 + 3, T0 + 100 * 10**6):
        want = await origin.tiering.offset_for_timestamp(  # type: ignore[union-attr]
            "t", 0, origin.logs.partition("t", 0), ts
        )
        got = await replica.tiering.offset_for_timestamp("t", 0, replica.logs.partition("t", 0), ts)
        if want is not None and want[0] >= end:
            want = None  # not archived yet: the replica does not have it
        assert got == want, ts
    assert refusal(topic) is not None and "read replica" in str(refusal(topic))


async def test_creation_refusals_name_what_to_fix(pair: tuple[Broker, Broker]) -> None:
    origin, replica = pair
    await archived(origin, partitions=2)
    assert replica.replicas is not None
    with pytest.raises(StreamdError, match="2 partition.*not the 3 requested") as wrong:
        await replica.replicas.create("t", 3, {"remote.readreplica": origin.url})
    assert wrong.value.code == ErrorCode.INVALID_PARTITIONS
    with pytest.raises(InvalidConfig, match="give only remote.readreplica"):
        await replica.replicas.create(
            "t", None, {"remote.readreplica": origin.url, "retention.ms": "1"}
        )
    with pytest.raises(InvalidConfig, match="contain one another"):
        await replica.replicas.create("t", None, {"remote.readreplica": replica.url})
    with pytest.raises(InvalidConfig, match=r"'nope' is not in the archive.*topics there: t"):
        await replica.replicas.create("nope", None, {"remote.readreplica": origin.url})
    with pytest.raises(InvalidConfig, match="not an object store URL"):
        await replica.replicas.create("t", None, {"remote.readreplica": "http://x"})
    topic, count = await replica.replicas.create(
        "t", None, {"remote.readreplica": origin.url}, validate_only=True
    )
    assert topic is None and count == 2 and replica.logs.get("t") is None
    assert not [k for k in await objects(replica.url) if "/t/" in k]


async def test_new_uploads_appear_after_one_sync(pair: tuple[Broker, Broker]) -> None:
    origin, replica = pair
    await archived(origin)
    assert replica.replicas is not None
    await replica.replicas.create("t", None, {"remote.readreplica": origin.url})
    plog = replica.logs.partition("t", 0)
    before = plog.high_watermark
    await fill(origin.logs, "t", 40)
    await origin.tick()
    after = manifest_of(origin).last_uploaded_offset + 1
    assert after > before
    assert plog.high_watermark == before, "nothing moves before the next sync"
    replica.moved.clear()
    await replica.replicas.sync_all()
    assert plog.high_watermark == after
    assert replica.moved == [("t", 0)]
    assert await replay(replica, "t", before, after) == await replay(origin, "t", before, after)
    report = replica.tiering.storage_report("t") if replica.tiering else None
    assert report is not None and report["origin"] == origin.url
    assert report["read_replica"] == "replica" and report["last_sync_ms"] > 0
    part = report["partitions"][0]
    assert part["mode"] == "read-replica" and part["lag_offsets"] == 0
    assert part["last_uploaded_offset"] == after - 1 == part["origin_last_offset"]


async def test_origin_retention_moves_earliest_and_a_stale_read_is_out_of_range(
    pair: tuple[Broker, Broker],
) -> None:
    origin, replica = pair
    await archived(origin, batches=80)
    assert replica.replicas is not None and replica.tiering is not None
    await replica.replicas.create("t", None, {"remote.readreplica": origin.url})
    plog = replica.logs.partition("t", 0)
    assert replica.tiering.earliest_offset("t", 0, plog) == 0
    origin.logs.update_config("t", {"retention.bytes": "9000"})
    await origin.tick()
    await origin.tick()  # retention's deletions run after the moved manifest is stored
    start = manifest_of(origin).remote_start_offset
    assert start > 0
    # The replica still has the old manifest: reading offset 0 finds its object gone.
    with pytest.raises(OffsetOutOfRange, match="removed by its origin's retention"):
        await replica.tiering.read("t", 0, 0, 1000, True)
    assert replica.tiering.earliest_offset("t", 0, plog) == start
    data = await replica.tiering.read("t", 0, start, 1000, True)
    assert validate_produce_batches(data, 1 << 30)[0].base_offset <= start


async def test_a_manifest_going_backwards_is_not_adopted(pair: tuple[Broker, Broker]) -> None:
    origin, replica = pair
    await archived(origin)
    assert replica.replicas is not None and replica.tiering is not None
    m = manifest_of(origin)
    older = m.__class__(**{**m.__dict__, "segments": m.segments[:1],
                           "last_uploaded_offset": m.segments[0].last_offset})
    await replica.replicas.create("t", None, {"remote.readreplica": origin.url})
    bucket = LocalStore(Path(origin.url.removeprefix("file://")), fsync=False)
    await bucket.put(keys.partition_manifest_key("t", m.topic_id, 0),
                     dump_partition_manifest(older))
    await replica.replicas.sync_all()
    plog = replica.logs.partition("t", 0)
    assert plog.high_watermark == m.last_uploaded_offset + 1
    report = replica.tiering.storage_report("t")
    assert report is not None and "went back" in report["partitions"][0]["last_error"]
    assert replica.replicas.health()["status"] == "degraded"
    await bucket.close()


async def test_promotion_continues_offsets_and_archives_to_its_own_store(
    pair: tuple[Broker, Broker],
) -> None:
    origin, replica = pair
    await archived(origin)
    assert replica.replicas is not None and replica.tiering is not None
    await replica.replicas.create("t", None, {"remote.readreplica": origin.url})
    end = manifest_of(origin).last_uploaded_offset + 1
    inherited = await replay(origin, "t", 0, end)
    await origin.close()  # the origin is gone; its bucket stays
    origin_objects = await objects(origin.url)

    nexts = await replica.replicas.promote("t")
    assert nexts == {0: end}
    topic = replica.logs.get("t")
    assert topic is not None and refusal(topic) is None
    assert "remote.readreplica" not in topic.overrides
    assert topic.config.remote_storage_enable
    plog = replica.logs.partition("t", 0)
    result = await plog.append(simple_batch(5, ts=T0, value_size=120), now_ms=T0)
    assert result.base_offset == end
    await fill(replica.logs, "t", 40)
    await replica.tick()
    own = manifest_of(replica)
    assert own.segments and own.segments[0].base_offset == end
    assert any(k.endswith("manifest.json") for k in await objects(replica.url))
    assert replica.tiering.earliest_offset("t", 0, plog) == 0
    assert (await replay(replica, "t", 0, end)) == inherited
    assert await replay(replica, "t", 0, plog.high_watermark)  # across both archives
    assert await objects(origin.url) == origin_objects, "the origin's store is never written"
    report = replica.tiering.storage_report("t")
    assert report is not None and report["read_replica"] == "promoted"
    assert report["partitions"][0]["inherited_last_offset"] == end - 1

    await replica.reopen()  # state survives a restart: the inherited archive is still served
    assert replica.tiering is not None
    assert replica.tiering.earliest_offset("t", 0, replica.logs.partition("t", 0)) == 0
    assert (await replay(replica, "t", 0, end)) == inherited
    origin.tiering = None  # closed above


async def test_promotion_fails_without_reading_the_origin_and_changes_nothing(
    pair: tuple[Broker, Broker], tmp_path: Path
) -> None:
    origin, replica = pair
    await archived(origin)
    assert replica.replicas is not None
    await replica.replicas.create("t", None, {"remote.readreplica": origin.url})
    root = Path(origin.url.removeprefix("file://"))
    root.rename(tmp_path / "moved-away")
    with pytest.raises(StreamdError, match="cannot promote t.*nothing changed"):
        await replica.replicas.promote("t")
    topic = replica.logs.get("t")
    assert topic is not None and topic.config.remote_readreplica == origin.url
    (tmp_path / "moved-away").rename(root)


async def test_a_restarted_replica_serves_from_its_state_before_syncing(
    pair: tuple[Broker, Broker], tmp_path: Path
) -> None:
    origin, replica = pair
    await archived(origin)
    assert replica.replicas is not None
    await replica.replicas.create("t", None, {"remote.readreplica": origin.url})
    end = manifest_of(origin).last_uploaded_offset + 1
    await replica.reopen()
    assert replica.replicas is not None and replica.tiering is not None
    plog = replica.logs.partition("t", 0)
    assert plog.high_watermark == end
    assert replica.replicas.replica("t") is not None
    assert await replay(replica, "t", 0, end) == await replay(origin, "t", 0, end)


async def test_a_replica_topic_without_state_is_adopted(
    pair: tuple[Broker, Broker],
) -> None:
    origin, replica = pair
    await archived(origin)
    source = origin.logs.get("t")
    assert source is not None
    # As a restore of the replica broker's own cluster archive creates it: topic and override.
    replica.logs.create_topic(
        "t", 1, {**source.overrides, "remote.readreplica": origin.url}, topic_id=source.topic_id
    )
    await replica.reopen()
    assert replica.replicas is not None
    await replica.replicas.sync_all()
    assert replica.logs.partition("t", 0).high_watermark == (
        manifest_of(origin).last_uploaded_offset + 1
    )


async def test_deleting_a_replica_touches_no_bucket(pair: tuple[Broker, Broker]) -> None:
    origin, replica = pair
    await archived(origin)
    assert replica.replicas is not None and replica.tiering is not None
    topic, _ = await replica.replicas.create("t", None, {"remote.readreplica": origin.url})
    assert topic is not None
    before = await objects(origin.url)
    await replica.tiering.on_topic_deleted(topic)
    await replica.logs.delete_topic("t")
    await replica.tick()
    assert await objects(origin.url) == before
    assert replica.replicas.replica("t") is None
    assert not list((replica.data / "tiering" / "readreplicas").glob("*.json"))


def test_the_topic_config() -> None:
    c = TopicConfig.from_overrides({}, {"remote.readreplica": "s3://bucket/prefix"})
    assert c.remote_readreplica == "s3://bucket/prefix"
    assert ("remote.readreplica", "s3://bucket/prefix", False) in c.describe()
    assert "remote.readreplica" not in {n for n, _, _ in TopicConfig().describe()}
    with pytest.raises(InvalidConfig, match="unknown topic config"):
        TopicConfig.from_overrides({"remote.readreplica": "s3://b"}, {})
    for bad in ("http://x", "s3://", "file://relative", "s3://b?x=1"):
        with pytest.raises(InvalidConfig, match="not an object store URL"):
            TopicConfig.from_overrides({}, {"remote.readreplica": bad})


def test_store_overlap() -> None:
    assert stores_overlap("s3://b", "s3://b/x")
    assert stores_overlap("s3://b/x/", "s3://b/x")
    assert stores_overlap("s3://b/x/y", "s3://b/x")
    assert not stores_overlap("s3://b/x", "s3://b/xy")
    assert not stores_overlap("s3://b/x", "s3://c/x")
    assert not stores_overlap("file:///a/b", "s3://a/b")
    assert stores_overlap("file:///tmp/a", "file:///tmp/a/b")
    assert not stores_overlap("file:///tmp/a", "file:///tmp/b")


def test_manifest_roundtrip_of_an_empty_origin_partition() -> None:
    from streamd.tiering.readreplica import empty_origin_manifest

    m = empty_origin_manifest("t", str(uuid.uuid4()), 3)
    assert load_partition_manifest(dump_partition_manifest(m)) == m
    assert m.next_offset == 0 and not m.segments


async def test_a_promotion_interrupted_after_it_was_recorded_finishes_on_start(
    pair: tuple[Broker, Broker],
) -> None:
    origin, replica = pair
    await archived(origin)
    assert replica.replicas is not None
    await replica.replicas.create("t", None, {"remote.readreplica": origin.url})
    state = replica.replicas.replica("t")
    assert state is not None
    state.promoted_at_ms = 1  # recorded; the process dies before the override is removed
    replica.replicas._save_state(state)
    await replica.reopen()
    topic = replica.logs.get("t")
    assert topic is not None and refusal(topic) is None
    assert topic.config.remote_storage_enable
    end = manifest_of(origin).last_uploaded_offset + 1
    assert replica.logs.partition("t", 0).log_end_offset == end
    assert await replay(replica, "t", 0, end) == await replay(origin, "t", 0, end)
