"""The tiering service over a real LogManager and a local-directory store, ticks driven by hand.

Covers the upload pipeline (segment, index, manifest; resume after restart), the local-deletion
veto, remote reads (byte-identical batches, KIP-74, corruption -> error), timestamp lookups
across the boundary, total retention, topic deletion and an unreachable store.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamd.errors import ErrorCode, OffsetOutOfRange, RemoteStorageError
from streamd.log.batch import validate_produce_batches
from streamd.log.manager import LogManager
from streamd.tiering.cache import ChunkCache
from streamd.tiering.checksum import crc32c_hex
from streamd.tiering.local_store import LocalStore
from streamd.tiering.manifest import load_partition_manifest
from streamd.tiering.service import TieringService, TieringSettings
from streamd.tiering.store import ObjectStore, StoreError
from tests.unit.log.batches import simple_batch

TIERED = {
    "remote.storage.enable": "true",
    "segment.bytes": "4096",
    "index.interval.bytes": "512",
    "local.retention.bytes": "5000",
}


class FlakyStore:
    """Delegates to a real store; ``down`` makes every call fail like an unreachable S3."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name in ("close",):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreError("connection refused (test outage)", retriable=True)
            return attr(*args, **kwargs)

        return call


T0 = (time.time_ns() // 1_000_000) - 3_600_000


async def fill(logs: LogManager, topic: str, batches: int, ts0: int = T0) -> list[bytes]:
    plog = logs.partition(topic, 0)
    out = []
    for i in range(batches):
        result = await plog.append(simple_batch(5, ts=ts0 + 100 * i, value_size=120), now_ms=ts0)
        piece = plog.read(result.base_offset, 1 << 20)
        assert piece is not None
        out.append(piece.read_bytes()[: len(simple_batch(5, value_size=120))])
    return out


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bucket = LocalStore(tmp / "bucket", fsync=False)
        self.store = FlakyStore(self.bucket)
        self.logs = LogManager(tmp / "data")
        self.logs.load()
        self.service: TieringService | None = None

    async def open_service(self, **settings: Any) -> TieringService:
        cache = ChunkCache(
            self.tmp / "cache",
            max_bytes=settings.pop("cache_max", 1 << 20),
            chunk_size=settings.pop("chunk", 1024),
        )
        self.service = TieringService(
            self.store,  # type: ignore[arg-type]
            self.logs,
            cache,
            manifest_dir=self.tmp / "data" / "tiering",
            settings=TieringSettings(**settings),
        )
        await self.service.start(schedule=False)
        return self.service

    async def tick_and_housekeep(self) -> None:
        assert self.service is not None
        await self.service.tick()
        await self.logs.run_housekeeping()

    async def objects(self) -> dict[str, int]:
        return {o.key: o.size async for o in self.bucket.list("")}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    yield e
    if e.service is not None:
        e.logs.tiering_veto = None
        await e.service.close()
    await e.logs.close()


async def replay(service: TieringService, plog: Any, topic: str, max_bytes: int) -> bytes:
    """Everything from offset 0 as a consumer sees it: remote below local start, then local."""
    out = bytearray()
    offset = service.earliest_offset(topic, 0, plog)
    while offset < plog.high_watermark:
        if offset < plog.log_start_offset:
            data = await service.read(topic, 0, offset, max_bytes, True)
        else:
            piece = plog.read(offset, max_bytes)
            assert piece is not None
            data = piece.read_bytes()
        assert data
        headers = validate_produce_batches(data, 1 << 30)
        assert headers[0].base_offset <= offset <= headers[0].last_offset
        out += data
        offset = headers[-1].next_offset
    return bytes(out)


async def test_pipeline_archives_then_local_retention_and_remote_reads(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED)
    plog = env.logs.partition("t", 0)
    await fill(env.logs, "t", 60)
    local_before = b"".join(s.file.pread(s.size, 0) for s in plog.segments)
    service = await env.open_service()
    await env.tick_and_housekeep()

    objs = await env.objects()
    manifest_key = [k for k in objs if k.endswith("manifest.json")][0]
    manifest = load_partition_manifest(await env.bucket.get(manifest_key))
    assert manifest.segments and manifest.segments[0].base_offset == 0
    for seg in manifest.segments:
        assert crc32c_hex(await env.bucket.get(seg.key)) == seg.checksum
        assert crc32c_hex(await env.bucket.get(seg.index_key)) == seg.index_checksum
    assert plog.log_start_offset > 0, "local retention should have run once archived"
    assert plog.log_start_offset <= manifest.last_uploaded_offset + 1
    assert service.earliest_offset("t", 0, plog) == 0
    assert service.latest_tiered_offset("t", 0) == manifest.last_uploaded_offset

    for max_bytes in (1, 700, 1 << 20):
        assert await replay(service, plog, "t", max_bytes) == local_before


async def delete_records(service: TieringService, plog: Any, offset: int) -> None:
    """What the DeleteRecords handler does: the archive first, then the local log."""
    await service.delete_records("t", 0, offset)
    plog.delete_records_before(offset)
    for task in list(service._background):
        await task


async def test_delete_records_inside_the_archive_hides_and_deletes_what_lies_below(
    env: Env,
) -> None:
    env.logs.create_topic("t", 1, TIERED)
    plog = env.logs.partition("t", 0)
    await fill(env.logs, "t", 60)
    service = await env.open_service()
    await env.tick_and_housekeep()
    manifest = service._states[("t", 0)].manifest
    first, second = manifest.segments[:2]
    cut = second.base_offset + 2
    assert cut < plog.log_start_offset, "the cut must lie in archived-only data"
    await delete_records(service, plog, cut)
    assert service.earliest_offset("t", 0, plog) == cut
    with pytest.raises(OffsetOutOfRange):
        await service.read("t", 0, cut - 1, 1000, True)
    data = await service.read("t", 0, cut, 1000, True)
    assert validate_produce_batches(data, 1 << 30)[0].base_offset <= cut
    objects = await env.objects()
    assert first.key not in objects and first.index_key not in objects
    assert second.key in objects
    stored = load_partition_manifest(await env.bucket.get(service._states[("t", 0)].manifest_key))
    assert stored.remote_start_offset == cut


async def test_delete_records_past_the_archive_does_not_block_later_uploads(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED | {"local.retention.bytes": "-1"})
    plog = env.logs.partition("t", 0)
    await fill(env.logs, "t", 30)
    service = await env.open_service()
    await env.tick_and_housekeep()
    archived_to = service._states[("t", 0)].manifest.last_uploaded_offset
    await fill(env.logs, "t", 30)  # sealed segments that are not archived yet
    cut = plog.high_watermark - 20
    assert cut > archived_to + 1
    await delete_records(service, plog, cut)
    await fill(env.logs, "t", 30)
    await env.tick_and_housekeep()
    state = service._states[("t", 0)]
    assert state.blocked is None and state.last_error is None
    assert state.manifest.remote_start_offset == cut
    assert state.manifest.last_uploaded_offset > cut
    assert service.earliest_offset("t", 0, plog) == cut
    with pytest.raises(OffsetOutOfRange):
        await service.read("t", 0, cut - 1, 1000, True)


async def test_kip74_and_max_bytes_bound(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED)
    plog = env.logs.partition("t", 0)
    await fill(env.logs, "t", 40)
    service = await env.open_service()
    await env.tick_and_housekeep()
    one = await service.read("t", 0, 7, 1, True)
    assert len(validate_produce_batches(one, 1 << 30)) == 1
    assert await service.read("t", 0, 7, 1, False) == b""
    many = await service.read("t", 0, 0, 2000, True)
    assert 0 < len(many) <= 2000
    with pytest.raises(OffsetOutOfRange):
        await service.read("t", 0, plog.high_watermark + 5, 100, True)


async def test_read_ahead_loads_the_following_segments_in_the_background(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED)
    await fill(env.logs, "t", 60)
    service = await env.open_service(chunk=1024, read_ahead_chunks=2)
    await env.tick_and_housekeep()
    state = service._states[("t", 0)]
    first, second = state.manifest.segments[:2]
    assert second.size_bytes > 2048
    await service.read("t", 0, 0, 700, True)
    await service.cache.idle()
    # The read needed ``first`` whole (one index entry); two chunks more reach into ``second``.
    cached = set(service.cache.cached_chunks())
    assert {(second.key, 0), (second.key, 1)} <= cached
    assert (second.key, 2) not in cached
    assert service.stats.read_ahead_chunks >= 2
    assert first.key in {key for key, _ in cached}


async def test_nothing_is_deleted_locally_while_the_store_is_down(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED)
    plog = env.logs.partition("t", 0)
    service = await env.open_service()
    env.store.down = True
    await fill(env.logs, "t", 60)
    for _ in range(3):
        await env.tick_and_housekeep()
    assert plog.log_start_offset == 0
    report = service.storage_report("t")
    assert report is not None and report["partitions"][0]["pending_uploads"] > 0
    assert report["partitions"][0]["last_error"]
    env.store.down = False
    await env.tick_and_housekeep()
    assert plog.log_start_offset > 0
    assert service.storage_report("t")["partitions"][0]["last_error"] is None  # type: ignore[index]


async def test_manifest_unreachable_at_start_means_no_uploads(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED)
    await fill(env.logs, "t", 30)
    env.store.down = True
    service = await env.open_service()
    await env.tick_and_housekeep()
    assert not await env.objects()
    env.store.down = False
    await env.tick_and_housekeep()
    assert service.latest_tiered_offset("t", 0) > 0


async def crash_after_segment_put(env: Env, body: Any) -> tuple[int, str]:
    """Archive 30 batches, stop, write 30 more; then leave ``body(segment)`` under the key the
    next segment's upload will use (what a crash after its PUT leaves). Returns (archived up
    to, key)."""
    env.logs.create_topic("t", 1, TIERED)
    await fill(env.logs, "t", 30)
    service = await env.open_service()
    await service.tick()
    first = service.latest_tiered_offset("t", 0)
    incarnation = service._states[("t", 0)].manifest.incarnation
    await service.close()
    env.service = None
    await fill(env.logs, "t", 30)
    plog = env.logs.partition("t", 0)
    orphan = next(s for s in plog.segments if s.base_offset == first + 1)
    env.logs.tiering_veto = None
    from streamd.tiering import keys

    topic = env.logs.get("t")
    assert topic is not None
    key = keys.segment_key(
        "t", str(topic.topic_id), 0, orphan.base_offset, orphan.last_offset,
        incarnation=incarnation,
    )
    await env.bucket.put(key, body(orphan))
    return first, key


async def test_restart_accepts_its_own_orphan(env: Env) -> None:
    first, key = await crash_after_segment_put(env, lambda seg: seg.file.pread(seg.size, 0))
    service = await env.open_service()
    assert service.latest_tiered_offset("t", 0) == first, "manifest loaded from the bucket"
    await service.tick()
    assert service.latest_tiered_offset("t", 0) > first
    state = service._states[("t", 0)]
    assert state.last_error is None
    assert key in {seg.key for seg in state.manifest.segments}
    for seg in state.manifest.segments:
        assert crc32c_hex(await env.bucket.get(seg.key)) == seg.checksum


async def test_other_bytes_under_our_key_are_never_replaced(env: Env) -> None:
    """Invariant 9: a key that holds other bytes (another broker archiving the same history)
    is left as it is; the partition reports the conflict and admits nothing past it."""
    first, key = await crash_after_segment_put(env, lambda seg: b"another writer's bytes")
    service = await env.open_service()
    await service.tick()
    state = service._states[("t", 0)]
    assert await env.bucket.get(key) == b"another writer's bytes"
    assert state.last_error is not None and "not replaced" in state.last_error
    assert service.latest_tiered_offset("t", 0) == first
    assert service.health()["status"] == "degraded"


async def test_corrupt_or_missing_object_is_an_error_not_bytes(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED)
    await fill(env.logs, "t", 60)
    service = await env.open_service()
    await env.tick_and_housekeep()
    seg = service._states[("t", 0)].manifest.segments[0]
    path = env.bucket.root / seg.key
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0xFF  # inside the last batch of the segment object
    path.write_bytes(bytes(raw))
    with pytest.raises(RemoteStorageError) as info:
        await service.read("t", 0, seg.last_offset, 1 << 20, True)
    assert info.value.code == ErrorCode.KAFKA_STORAGE_ERROR
    path.unlink()
    with pytest.raises(RemoteStorageError):
        await service.read("t", 0, seg.base_offset, 1 << 20, True)


async def test_timestamp_lookup_across_the_boundary(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED)
    plog = env.logs.partition("t", 0)
    await fill(env.logs, "t", 60)
    service = await env.open_service()
    await env.tick_and_housekeep()
    assert plog.log_start_offset > 10
    # batch i holds offsets 5i..5i+4 with timestamps T0 + 100 i + (0..4)
    assert await service.offset_for_timestamp("t", 0, plog, T0 + 100 * 2 + 3) == (13, T0 + 203)
    assert await service.offset_for_timestamp("t", 0, plog, T0 + 100 * 2 + 50) == (15, T0 + 300)
    last_batch = 59
    found = await service.offset_for_timestamp("t", 0, plog, T0 + 100 * last_batch)
    assert found == (5 * last_batch, T0 + 100 * last_batch)
    assert await service.offset_for_timestamp("t", 0, plog, 10**13) is None


async def test_total_retention_advances_remote_start_then_deletes(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED | {"retention.bytes": "9000"})
    plog = env.logs.partition("t", 0)
    await fill(env.logs, "t", 60)
    service = await env.open_service()
    await env.tick_and_housekeep()
    await service.tick()
    manifest = service._states[("t", 0)].manifest
    assert manifest.remote_start_offset > 0
    objs = await env.objects()
    logs_in_bucket = [k for k in objs if k.endswith(".log")]
    assert sorted(logs_in_bucket) == sorted(s.key for s in manifest.segments)
    assert service.earliest_offset("t", 0, plog) == manifest.remote_start_offset
    with pytest.raises(OffsetOutOfRange):
        await service.read("t", 0, 0, 100, True)


async def test_deleting_the_topic_deletes_its_objects(env: Env) -> None:
    topic = env.logs.create_topic("t", 2, TIERED)
    await fill(env.logs, "t", 30)
    service = await env.open_service()
    await service.on_topic_changed(topic)
    await service.tick()
    assert any(k.endswith("topic.json") for k in await env.objects())
    await service.on_topic_deleted(topic)
    await env.logs.delete_topic("t")
    for task in list(service._background):
        await task
    assert await env.objects() == {}


def _chunk_bytes_on_disk(directory: Path) -> int:
    """Sum of chunk file sizes; read-ahead may delete files while this runs."""
    total = 0
    for path in directory.glob("*.chunk"):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


async def test_cache_stays_within_its_bound(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED | {"local.retention.bytes": "0"})
    plog = env.logs.partition("t", 0)
    await fill(env.logs, "t", 120)
    service = await env.open_service(cache_max=3000, chunk=1024)
    await env.tick_and_housekeep()
    peak = 0
    offset = 0
    while offset < plog.log_start_offset:
        data = await service.read("t", 0, offset, 900, True)
        offset = validate_produce_batches(data, 1 << 30)[-1].next_offset
        peak = max(peak, service.cache.stats.bytes)
        assert _chunk_bytes_on_disk(env.tmp / "cache") <= 3000
    assert 0 < peak <= 3000 and service.cache.stats.evictions > 0


def forge_values(segment: bytes) -> bytes:
    """The same batches (offsets, sizes, timestamps) with every record value's ``v`` bytes
    turned into ``w`` and each batch's CRC32C recomputed: a consistent, valid segment holding
    other records (what another history of the partition could have archived)."""
    import crc32c

    out = bytearray(segment)
    pos = 0
    while pos < len(out):
        length = int.from_bytes(out[pos + 8 : pos + 12], "big")
        end = pos + 12 + length
        out[pos + 61 : end] = bytes(out[pos + 61 : end]).replace(b"v", b"w")
        out[pos + 17 : pos + 21] = crc32c.crc32c(bytes(out[pos + 21 : end])).to_bytes(4, "big")
        pos = end
    return bytes(out)


async def test_an_index_object_that_is_not_the_manifests_is_never_trusted(env: Env) -> None:
    """A segment object and its index object replaced together by another, self-consistent
    pair (same offsets and sizes, other records): only the manifest's ``index_checksum``
    tells them apart. The read must fail, never serve the other records (issue 15 item 9)."""
    from streamd.tiering.segment_index import scan_segment

    env.logs.create_topic("t", 1, TIERED)
    await fill(env.logs, "t", 60)
    service = await env.open_service()
    await env.tick_and_housekeep()
    seg = service._states[("t", 0)].manifest.segments[1]
    forged = forge_values(await env.bucket.get(seg.key))
    assert len(forged) == seg.size_bytes and forged != await env.bucket.get(seg.key)
    await env.bucket.put(seg.key, forged)
    await env.bucket.put(seg.index_key, scan_segment(forged, seg.base_offset).index)
    with pytest.raises(RemoteStorageError):
        data = await service.read("t", 0, seg.base_offset, 1 << 20, True)
        raise AssertionError(f"served {bytes(data)[61:200]!r}")


class ManifestPutsFail:
    """Delegates to a real store; while ``failing``, PUTs of partition manifests fail."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put(self, key: str, data: bytes, **kwargs: Any) -> None:
        if self.failing and key.endswith("/manifest.json"):
            raise StoreError("manifest PUT refused (test)", retriable=True)
        await self.inner.put(key, data, **kwargs)


async def test_total_retention_deletes_nothing_the_stored_manifest_names(env: Env) -> None:
    """Invariant 5 (issue 15 item 10): while the advanced manifest cannot be stored, every
    object the stored manifest names stays in the bucket."""
    env.logs.create_topic("t", 1, TIERED)
    await fill(env.logs, "t", 60)
    env.store = ManifestPutsFail(env.bucket)  # type: ignore[assignment]
    service = await env.open_service()
    await env.tick_and_housekeep()
    state = service._states[("t", 0)]
    assert len(state.manifest.segments) > 3
    env.store.failing = True  # type: ignore[attr-defined]
    env.logs.update_config("t", {"retention.bytes": "9000"})
    for _ in range(3):
        await service.tick()
    assert state.last_error is not None and "manifest" in state.last_error
    stored = load_partition_manifest(await env.bucket.get(state.manifest_key))
    objects = await env.objects()
    for seg in stored.segments:
        assert seg.key in objects and seg.index_key in objects, f"{seg.key} deleted too early"
    assert service.stats.deleted_objects == 0
    env.store.failing = False  # type: ignore[attr-defined]
    await service.tick()
    assert state.manifest.remote_start_offset > 0 and service.stats.deleted_objects > 0
