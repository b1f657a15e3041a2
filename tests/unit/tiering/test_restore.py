"""Archive -> restore -> serve, in process: a real LogManager and TieringService over a local
directory store, the cluster metadata archive, then :func:`read_plan` / :func:`write_topics`
into a fresh data_dir and a new service that serves the archive and keeps archiving."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamd.log.batch import validate_produce_batches
from streamd.log.manager import LogManager
from streamd.tiering import keys
from streamd.tiering.cache import ChunkCache
from streamd.tiering.cluster_archive import (
    METADATA_KIND,
    ClusterArchive,
    seal,
    topic_entries,
    unseal,
)
from streamd.tiering.local_store import LocalStore
from streamd.tiering.manifest import ManifestError, UnsupportedManifestVersion
from streamd.tiering.partition_state import manifest_dir
from streamd.tiering.restore import RestoreError, read_plan, write_topics
from streamd.tiering.service import TieringService
from tests.unit.log.batches import simple_batch

TIERED = {
    "remote.storage.enable": "true",
    "segment.bytes": "4096",
    "index.interval.bytes": "512",
    "local.retention.bytes": "5000",
}
T0 = (time.time_ns() // 1_000_000) - 3_600_000


class World:
    """One broker's worth of logs + tiering + archive over a shared bucket directory."""

    def __init__(self, tmp: Path, data: str, bucket: LocalStore) -> None:
        self.data_dir = tmp / data
        self.bucket = bucket
        self.logs = LogManager(self.data_dir)
        self.logs.load()
        self.service: TieringService | None = None
        self.acls: dict[str, Any] = {"version": 1, "acls": []}
        self.creds: dict[str, Any] = {"version": 1, "users": {}}
        self.offsets: dict[str, list[dict[str, Any]]] = {}
        self.archive: ClusterArchive | None = None

    async def start(self, tmp: Path, cluster_id: str = "c1") -> TieringService:
        cache = ChunkCache(tmp / f"cache-{self.data_dir.name}", max_bytes=1 << 20,
                           chunk_size=1024)
        self.service = TieringService(
            self.bucket, self.logs, cache, manifest_dir=manifest_dir(self.data_dir)
        )
        await self.service.start(schedule=False)
        self.archive = ClusterArchive(
            self.bucket, cluster_id=cluster_id, topics=lambda: topic_entries(self.logs),
            acls=lambda: self.acls, credentials=lambda: self.creds,
            offsets=lambda: self.offsets, offsets_interval_ms=0,
        )
        self.service.tick_hooks.append(self.archive.tick)
        return self.service

    async def tick(self) -> None:
        assert self.service is not None
        await self.service.tick()
        await self.logs.run_housekeeping()

    async def close(self) -> None:
        if self.service is not None:
            self.logs.tiering_veto = None
            self.service.store = _Unclosable(self.bucket)  # type: ignore[assignment]
            await self.service.close()
        await self.logs.close()


class _Unclosable:
    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner

    async def close(self) -> None:
        return None


async def fill(logs: LogManager, topic: str, partition: int, batches: int) -> None:
    plog = logs.partition(topic, partition)
    for i in range(batches):
        await plog.append(simple_batch(5, ts=T0 + 100 * i, value_size=120), now_ms=T0)


async def replay(service: TieringService, plog: Any, topic: str, partition: int) -> bytes:
    out = bytearray()
    offset = service.earliest_offset(topic, partition, plog)
    while offset < plog.high_watermark:
        if offset < plog.log_start_offset:
            data = await service.read(topic, partition, offset, 1 << 20, True)
        else:
            piece = plog.read(offset, 1 << 20)
            assert piece is not None
            data = piece.read_bytes()
        headers = validate_produce_batches(data, 1 << 30)
        out += data
        offset = headers[-1].next_offset
    return bytes(out)


@pytest.fixture
def bucket(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "bucket", fsync=False)


async def archived_world(tmp_path: Path, bucket: LocalStore) -> tuple[World, dict[Any, bytes]]:
    """Topic t (2 partitions, tiered) and u (1, local only), everything sealed archived."""
    w = World(tmp_path, "old", bucket)
    w.logs.create_topic("t", 2, TIERED | {"retention.ms": "86400000"})
    w.logs.create_topic("u", 1, {"cleanup.policy": "delete"})
    await w.start(tmp_path)
    await fill(w.logs, "t", 0, 60)
    await fill(w.logs, "t", 1, 30)
    w.acls = {"version": 1, "acls": [{"principal": "User:a"}]}
    w.creds = {"version": 1, "users": {"a": {"SCRAM-SHA-256": {"salt": "c2FsdA=="}}}}
    w.offsets = {"g": [{"topic": "t", "partition": 0, "offset": 17, "leader_epoch": -1,
                        "metadata": "m", "commit_ts": 1}]}
    for _ in range(2):
        await w.tick()
    assert w.service is not None
    archived = {}
    for p in range(2):
        last = w.service.latest_tiered_offset("t", p)
        assert last > 0
        plog = w.logs.partition("t", p)
        full = await replay(w.service, plog, "t", p)
        headers = validate_produce_batches(full, 1 << 30)
        cut = sum(h.batch_length + 12 for h in headers if h.last_offset <= last)
        archived[("t", p)] = full[:cut]
    return w, archived


async def test_restore_serves_every_archived_byte_and_keeps_archiving(
    tmp_path: Path, bucket: LocalStore
) -> None:
    old, archived = await archived_world(tmp_path, bucket)
    old_manifests = {p: old.service.latest_tiered_offset("t", p) for p in range(2)}  # type: ignore[union-attr]
    old_incarnations = {p: old.service._states[("t", p)].manifest.incarnation for p in range(2)}  # type: ignore[union-attr]
    await old.close()
    before = {o.key: o.etag async for o in bucket.list("") if o.key.endswith((".log", ".index"))}

    plan = await read_plan(bucket)
    assert plan.cluster_id == "c1"
    assert [t.name for t in plan.topics] == ["t", "u"]
    t_plan = plan.topics[0]
    assert [p.next_offset for p in t_plan.partitions] == [old_manifests[0] + 1,
                                                          old_manifests[1] + 1]
    assert t_plan.partitions[0].start_offset == 0 and not plan.gaps
    assert plan.acls == {"version": 1, "acls": [{"principal": "User:a"}]}
    assert plan.offsets["g"][0]["offset"] == 17

    new_dir = tmp_path / "new"
    assert await write_topics(plan, new_dir, {}) == []
    new = World(tmp_path, "new", bucket)
    topic = new.logs.get("t")
    assert topic is not None and str(topic.topic_id) == t_plan.topic_id
    assert topic.overrides == TIERED | {"retention.ms": "86400000"}
    service = await new.start(tmp_path)
    for p in range(2):
        plog = new.logs.partition("t", p)
        assert plog.log_start_offset == plog.high_watermark == old_manifests[p] + 1
        assert service.earliest_offset("t", p, plog) == 0
        assert await replay(service, plog, "t", p) == archived[("t", p)], "byte-identical"
    u = new.logs.partition("u", 0)
    assert (u.log_start_offset, u.high_watermark) == (0, 0)

    await fill(new.logs, "t", 0, 40)
    assert new.logs.partition("t", 0).high_watermark == old_manifests[0] + 1 + 200
    await new.tick()
    await new.tick()
    for p in range(2):  # the restored broker writes under a history of its own (invariant 9)
        restored = service._states[("t", p)]
        assert restored.loaded and restored.manifest.incarnation not in ("", old_incarnations[p])
    assert service.latest_tiered_offset("t", 0) > old_manifests[0]
    new_keys = [s.key for s in service._states[("t", 0)].manifest.segments
                if s.base_offset > old_manifests[0]]
    assert new_keys and all(
        k.endswith(f"-{service._states[('t', 0)].manifest.incarnation}.log") for k in new_keys
    )
    after = {o.key: o.etag async for o in bucket.list("") if o.key.endswith((".log", ".index"))}
    assert len(after) > len(before)
    assert {k: after[k] for k in before} == before, "no archived object was rewritten"
    await new.close()


async def test_write_topics_twice_gives_the_same_data_dir(
    tmp_path: Path, bucket: LocalStore
) -> None:
    old, _ = await archived_world(tmp_path, bucket)
    await old.close()
    plan = await read_plan(bucket)

    def snapshot(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".clean-shutdown"
        }

    await write_topics(plan, tmp_path / "r", {})
    first = snapshot(tmp_path / "r")
    await write_topics(plan, tmp_path / "r", {})
    assert snapshot(tmp_path / "r") == first


async def test_topic_filter_and_deleted_segment(tmp_path: Path, bucket: LocalStore) -> None:
    old, _ = await archived_world(tmp_path, bucket)
    assert old.service is not None
    seg = old.service._states[("t", 1)].manifest.segments[0]
    await old.close()
    await bucket.delete(seg.key)

    plan = await read_plan(bucket, ["t"])
    assert [t.name for t in plan.topics] == ["t"]
    assert plan.acls is None and plan.credentials is None, "--topic leaves ACLs/users alone"
    assert [g.what for g in plan.gaps] == [f"t-1 offsets {seg.base_offset}-{seg.last_offset}"]
    assert plan.topics[0].partitions[1].next_offset > seg.last_offset + 1, "the rest restored"
    with pytest.raises(RestoreError, match="'zz' is not in the archive"):
        await read_plan(bucket, ["zz"])


async def test_clear_errors(tmp_path: Path) -> None:
    empty = LocalStore(tmp_path / "empty", fsync=False)
    with pytest.raises(RestoreError, match="no streamd data under"):
        await read_plan(empty)

    class Down(LocalStore):
        async def check(self) -> None:
            from streamd.tiering.store import StoreAccessError

            raise StoreAccessError("bucket 'x' does not exist")

    with pytest.raises(RestoreError, match="^bucket unreachable: bucket 'x' does not exist"):
        await read_plan(Down(tmp_path / "down"))

    future = json.loads(seal(METADATA_KIND, {"cluster_id": "c", "topics": []}))
    future["format_version"] = 2
    await empty.put(keys.CLUSTER_METADATA_KEY, json.dumps(future).encode())
    with pytest.raises(RestoreError, match="format_version 2 is not supported.*upgrade"):
        await read_plan(empty)


async def test_unknown_partition_manifest_version_stops_the_restore(
    tmp_path: Path, bucket: LocalStore
) -> None:
    old, _ = await archived_world(tmp_path, bucket)
    await old.close()
    topic_id = (await read_plan(bucket)).topics[0].topic_id
    key = keys.partition_manifest_key("t", topic_id, 0)
    doc = json.loads(await bucket.get(key))
    doc["format_version"] = 9
    await bucket.put(key, json.dumps(doc).encode())
    with pytest.raises(RestoreError, match=f"{key}: .*format_version 9"):
        await read_plan(bucket)


async def test_corrupt_partition_manifest_skips_its_topic_only(
    tmp_path: Path, bucket: LocalStore
) -> None:
    old, _ = await archived_world(tmp_path, bucket)
    await old.close()
    topic_id = (await read_plan(bucket)).topics[0].topic_id
    key = keys.partition_manifest_key("t", topic_id, 1)
    await bucket.put(key, (await bucket.get(key)).replace(b'"partition": 1', b'"partition": 3'))
    plan = await read_plan(bucket)
    assert [t.name for t in plan.topics] == ["u"]
    assert any("checksum mismatch" in s.why for s in plan.skipped)
    assert plan.offsets == {}, "offsets of a topic that is not restored are not restored"


# ---- the cluster metadata archive ----------------------------------------------------------------


async def test_archive_stores_changes_only_and_guards_another_clusters_archive(
    tmp_path: Path, bucket: LocalStore
) -> None:
    logs = LogManager(tmp_path / "d")
    logs.load()
    topics: list[Any] = []
    archive = ClusterArchive(
        bucket, cluster_id="c1", topics=lambda: list(topics), acls=lambda: {"acls": []},
        credentials=lambda: {"users": {}}, offsets=lambda: {}, offsets_interval_ms=60_000,
    )
    await archive.tick()
    assert (archive.metadata.writes, archive.offsets.writes) == (1, 1)
    await archive.tick()
    assert archive.metadata.writes == 1, "unchanged: not stored again"
    assert archive.status()["metadata"]["pending"] is False
    topics.append({"name": "x", "topic_id": str(uuid.uuid4()), "partitions": 1, "overrides": {}})
    assert archive.status()["metadata"]["pending"] is True
    await archive.tick()
    assert archive.metadata.writes == 2
    doc = unseal(await bucket.get(keys.CLUSTER_METADATA_KEY), METADATA_KIND)
    assert doc["topics"][0]["name"] == "x" and doc["cluster_id"] == "c1"

    intruder = ClusterArchive(
        bucket, cluster_id="c2", topics=lambda: [], acls=lambda: {}, credentials=lambda: {},
        offsets=lambda: {},
    )
    await intruder.tick()
    assert intruder.blocked and "cluster 'c1'" in intruder.blocked
    doc = unseal(await bucket.get(keys.CLUSTER_METADATA_KEY), METADATA_KIND)
    assert doc["cluster_id"] == "c1" and doc["topics"], "the archive was not replaced"
    await logs.close()


def test_cluster_documents_are_checksummed_and_versioned() -> None:
    data = seal(METADATA_KIND, {"cluster_id": "c", "topics": []})
    assert unseal(data, METADATA_KIND)["cluster_id"] == "c"
    with pytest.raises(ManifestError, match="checksum mismatch"):
        unseal(data.replace(b'"c"', b'"d"'), METADATA_KIND)
    with pytest.raises(ManifestError, match="not a cluster-offsets"):
        unseal(data, "cluster-offsets")
    doc = json.loads(data)
    doc["format_version"] = 3
    with pytest.raises(UnsupportedManifestVersion):
        unseal(json.dumps(doc).encode(), METADATA_KIND)
