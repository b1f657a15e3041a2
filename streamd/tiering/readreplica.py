"""Read replicas: topics this broker serves read-only from the archive another broker writes.

A topic created with ``remote.readreplica=STORE_URL`` (the origin broker's ``tiering.store``,
opened with this broker's own ``tiering.s3.*`` settings) is a *replica*: its partition count,
topic id and configs come from the origin's archive, and every offset the origin archived is
served from the origin's objects through the same manifest / index / chunk-cache path as this
broker's own archive (:class:`streamd.tiering.remote_reader.RemoteReader`, whose integrity
checks apply unchanged). Redpanda calls the same thing a remote read replica.

Decisions:

- **Finding the topic.** The origin's ``cluster/metadata.json`` names the topic's id (else,
  for an archive without it, one listing of the store finds ``.../<topic>/<id>/topic.json``);
  the topic manifest gives partition count and configs. A topic without a topic manifest is not
  archived by its origin (``remote.storage.enable``) and cannot be replicated. A requested
  partition count that differs from the origin's is refused, naming both counts; so are configs
  given next to ``remote.readreplica`` (they come from the origin). The local topic gets the
  origin's topic id.
- **Offsets.** The replica's local log holds no record: it is kept empty and starting at the
  origin archive's next offset (``max(last_uploaded_offset + 1, remote_start_offset)``), so
  the high watermark (ListOffsets latest, Fetch) is the end of the archive and everything below
  it is read from the bucket; earliest is the origin's remote start. Consumer groups and
  committed offsets are this broker's own, as for any local topic.
- **Sync.** Every ``tiering.readreplica_sync_interval_ms`` each replica re-reads the origin's
  topic manifest (configs, added partitions) and partition manifests (one GET each); a
  manifest that moved is adopted at once and wakes long-polling fetches, so data archived
  before a sync started is visible when it ends: within one interval. A manifest that goes
  backwards (the origin's archive was replaced), names another partition, or cannot be read is
  not adopted: the last good one keeps being served and the failure is reported (admin API,
  ``/v1/health`` degraded) until a later sync succeeds.
- **Total retention on the origin** moves the remote start in its manifest before the objects
  are deleted (invariant 5), so a synced replica simply shows a later earliest offset. A read
  that finds an object gone (a manifest older than the deletion) re-reads that manifest at
  once: below the new start the fetch answers OFFSET_OUT_OF_RANGE, which a consumer handles
  like any retention (its reset policy), never a storage error in the middle of a read.
- **Transactions.** read_committed fetches list the aborted transactions from the origin's
  archived transaction indexes (the same reader path as the origin's own replay), and a
  transaction may not add a replica's partition (AddPartitionsToTxn answers
  INVALID_TOPIC_EXCEPTION: its markers would land in the replica's log). The replica's last
  stable offset is the end of the origin's archive. That is exact because the origin archives
  only below its own LSO and never ends its archive between an aborted transaction's records
  and its marker (:mod:`streamd.tiering.candidates`): no archived record belongs to a
  transaction the archive does not decide. (An archive written by a streamd before that rule
  may still end inside a transaction.)
- **Read-only.** Produce, DeleteRecords, CreatePartitions and config changes other than
  removing ``remote.readreplica`` are refused by the Kafka handlers (:func:`refusal`) with a
  message saying the topic is a read replica. This broker never writes, deletes or lists
  anything into the origin's store except reads (GET, LIST, HEAD); its own store may not
  contain the origin's or lie inside it, so not even its own objects land in the origin's
  prefix.
- **Promotion** (``streamd topic promote NAME``, on the wire an IncrementalAlterConfigs that
  deletes ``remote.readreplica``, or an AlterConfigs without it: what ``kafka-configs
  --delete-config`` sends) re-reads every manifest first and fails if it cannot (promoting on
  a stale manifest would hand out offsets the origin archived meanwhile). It then records the
  promotion, removes ``remote.readreplica`` and turns ``remote.storage.enable`` on: the topic
  is an ordinary writable, tiered topic whose next offsets follow the last archived one, and
  this broker archives it to its own store from then on. The origin's archived history stays
  where it is and is still served from there (this broker's manifest starts after it): the
  *inherited* archive, frozen at promotion except that its start follows the topic's total
  retention and the origin's own remote start, should the origin come back. Nothing is ever
  deleted from the origin's store. ``streamd restore`` of this broker's archive does not bring
  the inherited history back (it is not in this broker's store).
- **State** lives in ``data_dir/tiering/readreplicas``: one sealed document per topic (origin,
  topic id, promotion time) and the last adopted manifest of each partition, so a restarted
  broker serves at once, before its first sync. A topic whose ``remote.readreplica`` is set
  without such state (restored from this broker's cluster archive) is adopted on start.
- **Cache.** The chunk cache is the broker's own, keyed by object key. Keys embed the topic id
  and the incarnation, both random: two stores can share a key only if one holds a copy of the
  other's archive, and then the bytes are the same (invariant 9).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from streamd.errors import (
    ErrorCode,
    InvalidConfig,
    InvalidPartitions,
    OffsetOutOfRange,
    RemoteStorageError,
    StreamdError,
)
from streamd.log.files import atomic_write
from streamd.log.manager import LogManager, Topic
from streamd.log.txn_index import AbortedTxn
from streamd.tiering import keys
from streamd.tiering.cache import ChunkCache
from streamd.tiering.cluster_archive import METADATA_KIND, unseal
from streamd.tiering.manifest import (
    ManifestError,
    PartitionManifest,
    TopicManifest,
    advance_remote_start,
    load_partition_manifest,
    load_topic_manifest,
    open_document,
    seal_document,
)
from streamd.tiering.partition_state import ManifestCopies
from streamd.tiering.remote_reader import RemoteReader
from streamd.tiering.retention import plan_remote_start
from streamd.tiering.stats import TieringStats
from streamd.tiering.store import VERBS, ObjectNotFound, ObjectStore, StoreError

log = logging.getLogger("streamd.tiering.readreplica")

CONFIG = "remote.readreplica"
STATE_KIND = "readreplica"
SYNC_CONCURRENCY = 16

Family = tuple[str, str, str, list[tuple[dict[str, str], float]]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ReadReplicaTopic(StreamdError):
    """A write to a read replica (produce, delete records, new partitions)."""

    code = ErrorCode.INVALID_TOPIC_EXCEPTION


def refusal(topic: Topic) -> str | None:
    """Why ``topic`` refuses writes (None: it does not). The Kafka handlers answer with it."""
    origin = topic.config.remote_readreplica
    if not origin:
        return None
    return (
        f"topic {topic.name!r} is a read replica of {origin}: it is read-only (write to the "
        f"origin broker, or promote the replica with `streamd topic promote {topic.name}`)"
    )


# ---- stores --------------------------------------------------------------------------------------


def store_location(url: str) -> tuple[str, str, tuple[str, ...]]:
    """``(scheme, bucket, path components)`` of a store URL, for containment checks."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return "s3", parsed.netloc, tuple(p for p in parsed.path.split("/") if p)
    path = Path(parsed.path).resolve() if parsed.path else Path("/")
    return parsed.scheme, "", path.parts


def stores_overlap(a: str, b: str) -> bool:
    """True when one store URL equals or contains the other (same bucket, prefix of it)."""
    sa, ba, pa = store_location(a)
    sb, bb, pb = store_location(b)
    if (sa, ba) != (sb, bb):
        return False
    shorter = min(len(pa), len(pb))
    return pa[:shorter] == pb[:shorter]


# ---- state ---------------------------------------------------------------------------------------


@dataclass
class ReplicaPartition:
    """One partition of a replica: the origin's manifest last adopted, and how syncing goes.

    Invariant: ``manifest`` was read from the origin's store (or is the local copy of one that
    was); the local log of a replica starts at :attr:`next_offset` or later.
    """

    index: int
    manifest: PartitionManifest
    synced_at_ms: int = -1
    """Start of the last sync that read this manifest successfully (-1: none this run)."""
    origin_last_offset: int = -1
    """The origin's last archived offset as last read (it may be ahead of ``manifest`` only
    when that manifest was refused)."""
    errors: int = 0
    last_error: str | None = None

    @property
    def next_offset(self) -> int:
        return max(self.manifest.next_offset, self.manifest.remote_start_offset)

    def note_error(self, topic: str, message: str) -> None:
        self.errors += 1
        if message != self.last_error:
            log.warning("read replica %s-%d: %s", topic, self.index, message)
        self.last_error = message

    def clear_error(self, topic: str) -> None:
        if self.last_error is not None:
            log.info("read replica %s-%d: syncing again", topic, self.index)
        self.last_error = None


@dataclass(eq=False)
class Replica:
    name: str
    topic_id: str
    origin: str
    partitions: list[ReplicaPartition]
    promoted_at_ms: int = -1
    """>= 0 once promoted: the manifests are the inherited archive, frozen but for its start."""
    last_sync_ms: int = -1
    syncs: int = 0
    topic_error: str | None = None
    """The origin's topic manifest could not be read (the last sync is incomplete)."""
    config_error: str | None = None
    """Its configs or partition count could not be applied here (reported, not blocking)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def promoted(self) -> bool:
        return self.promoted_at_ms >= 0

    def state_doc(self) -> bytes:
        return seal_document(
            {
                "format_version": 1,
                "kind": STATE_KIND,
                "topic": self.name,
                "topic_id": self.topic_id,
                "origin": self.origin,
                "promoted_at_ms": self.promoted_at_ms,
            }
        )


@dataclass(frozen=True, kw_only=True)
class OriginTopic:
    """The topic as the origin's archive describes it."""

    name: str
    topic_id: str
    partition_count: int
    configs: dict[str, str]


@dataclass
class Origin:
    """One origin store (shared by every replica of topics archived there)."""

    url: str
    store: ObjectStore
    reader: RemoteReader


# ---- reading the origin --------------------------------------------------------------------------


async def find_origin_topic(store: ObjectStore, name: str) -> OriginTopic:
    """The topic ``name`` in the archive of ``store``; raises :class:`StreamdError` (a message
    an operator can act on) when it is not there or not archived."""
    keys.validate_topic(name)
    topic_id = None
    listed: list[str] = []
    try:
        metadata: dict[str, Any] | None = unseal(
            await store.get(keys.CLUSTER_METADATA_KEY), METADATA_KIND
        )
    except ObjectNotFound:
        metadata = None
    except ManifestError as exc:
        log.warning("origin %s: unreadable cluster metadata (%s); listing it", store.description,
                    exc)
        metadata = None
    meta_entry: dict[str, Any] | None = None
    if metadata is not None:
        for entry in metadata.get("topics", []):
            listed.append(str(entry.get("name")))
            if entry.get("name") == name:
                meta_entry = entry
                topic_id = str(entry["topic_id"])
    if topic_id is None:
        found = await _discover_topics(store)
        topic_id = found.get(name)
        listed += [t for t in found if t not in listed]
    if topic_id is None:
        have = ", ".join(sorted(listed)) if listed else "none"
        raise InvalidConfig(
            f"{CONFIG}: topic {name!r} is not in the archive at {store.description} "
            f"(topics there: {have})"
        )
    key = keys.topic_manifest_key(name, topic_id)
    try:
        tm: TopicManifest | None = load_topic_manifest(await store.get(key))
    except ObjectNotFound:
        tm = None
    except ManifestError as exc:
        raise RemoteStorageError(f"{CONFIG}: topic manifest {key} is unreadable: {exc}") from None
    if tm is None:
        raise InvalidConfig(
            f"{CONFIG}: topic {name!r} at {store.description} has no topic manifest: its origin "
            "does not archive it (remote.storage.enable), or has not written the manifest yet "
            "(try again after the origin's next upload interval)"
        )
    count = tm.partition_count
    if meta_entry is not None and str(meta_entry["topic_id"]) == tm.topic_id:
        count = max(count, int(meta_entry["partitions"]))
    return OriginTopic(
        name=name, topic_id=tm.topic_id, partition_count=count, configs=dict(tm.configs)
    )


async def _discover_topics(store: ObjectStore) -> dict[str, str]:
    """Topic name -> id of every ``<t>/<topic>/<id>/topic.json`` in the store: one listing, for
    an archive whose cluster metadata does not (yet) name the topic."""
    found: dict[str, str] = {}
    async for info in store.list(""):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[3] == keys.TOPIC_MANIFEST_NAME:
            with contextlib.suppress(ValueError, StreamdError):
                if info.key == keys.topic_manifest_key(parts[1], parts[2]):
                    found[parts[1]] = parts[2]
    return found


async def read_origin_manifest(
    store: ObjectStore, topic: str, topic_id: str, index: int
) -> PartitionManifest | None:
    """The origin's manifest of one partition (None: nothing archived yet). Raises
    :class:`RemoteStorageError` / :class:`ManifestError` when it cannot be read or is not the
    manifest of that partition."""
    key = keys.partition_manifest_key(topic, topic_id, index)
    try:
        manifest = load_partition_manifest(await store.get(key))
    except ObjectNotFound:
        return None
    if (manifest.topic, manifest.topic_id, manifest.partition) != (topic, topic_id, index):
        raise ManifestError(f"{key} is the manifest of another partition")
    return manifest


def empty_origin_manifest(topic: str, topic_id: str, index: int) -> PartitionManifest:
    """What a partition the origin has archived nothing of looks like (served: nothing)."""
    return PartitionManifest(topic=topic, topic_id=topic_id, partition=index)


# ---- the service ---------------------------------------------------------------------------------


class ReadReplicas:
    """Every read replica (and promoted replica's inherited archive) of this broker."""

    def __init__(
        self,
        logs: LogManager,
        cache: ChunkCache,
        *,
        state_dir: Path,
        own_store: str,
        open_store: Callable[[str], ObjectStore],
        sync_interval_ms: int = 10_000,
        read_ahead_chunks: int = 2,
        on_moved: Callable[[str, int], None] | None = None,
        on_promoted: Callable[[Topic], Awaitable[None]] | None = None,
        own_archive_bytes: Callable[[str, int], int] | None = None,
    ) -> None:
        self.logs = logs
        self.cache = cache
        self.state_dir = Path(state_dir)
        self.own_store = own_store
        self.sync_interval_ms = sync_interval_ms
        self.stats = TieringStats()
        self._open_store = open_store
        self._read_ahead = read_ahead_chunks
        self._on_moved = on_moved or (lambda _t, _p: None)
        self._on_promoted = on_promoted
        self._own_archive_bytes = own_archive_bytes or (lambda _t, _p: 0)
        self._copies = ManifestCopies(self.state_dir / "manifests")
        self._replicas: dict[str, Replica] = {}
        self._origins: dict[str, Origin] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(SYNC_CONCURRENCY)
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self, *, schedule: bool = True) -> None:
        """Load the state of every replica (serving its last manifests at once), adopt replica
        topics without state, finish an interrupted promotion, then sync in the background."""
        await asyncio.to_thread(self.state_dir.mkdir, parents=True, exist_ok=True)
        topics = self.logs.topics()
        for path in sorted(self.state_dir.glob("*.json")):
            replica = await asyncio.to_thread(self._load_state, path)
            topic = topics.get(replica.name) if replica is not None else None
            if replica is None or topic is None or str(topic.topic_id) != replica.topic_id:
                await asyncio.to_thread(self._forget_files, path.stem)
                continue
            if not (replica.promoted or topic.config.remote_readreplica):
                await asyncio.to_thread(self._forget_files, path.stem)
                continue
            self._replicas[replica.name] = replica
            if replica.promoted and topic.config.remote_readreplica:
                await self._finish_promotion(replica, topic)
        for topic in topics.values():
            url = topic.config.remote_readreplica
            if url and topic.name not in self._replicas:
                log.info("adopting read replica %s of %s (no local state)", topic.name, url)
                replica = self._new_replica(topic, url)
                self._replicas[topic.name] = replica
                await asyncio.to_thread(self._save_state, replica)
        if schedule:
            self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for origin in self._origins.values():
            with contextlib.suppress(Exception):
                await origin.reader.close()
            with contextlib.suppress(Exception):
                await origin.store.close()
        self._origins.clear()

    def set_sync_interval(self, interval_ms: int) -> None:
        self.sync_interval_ms = interval_ms
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.sync_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("read replica sync failed; retrying on the next one")
            left = self.sync_interval_ms / 1000 - (time.monotonic() - started)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, left))

    async def sync_all(self) -> None:
        """One sync of every replica (and of every inherited archive's start). Never raises
        for a replica's failure: it is recorded on the replica."""
        await asyncio.gather(*(self.sync(r) for r in list(self._replicas.values())))

    # ---- topics --------------------------------------------------------------------------------

    def replica(self, name: str) -> Replica | None:
        return self._replicas.get(name)

    def origin(self, url: str) -> Origin:
        origin = self._origins.get(url)
        if origin is None:
            if self._closed:
                raise RemoteStorageError("the broker is shutting down")
            store = self._open_store(url)
            reader = RemoteReader(store, self.cache, self.stats, read_ahead_chunks=self._read_ahead)
            origin = self._origins[url] = Origin(url, store, reader)
        return origin

    def check_origin_url(self, url: str) -> None:
        if stores_overlap(url, self.own_store):
            raise InvalidConfig(
                f"{CONFIG}: {url} and this broker's own tiering.store {self.own_store} contain "
                "one another; a replica never writes into its origin's store, so give each "
                "broker its own prefix (e.g. s3://bucket/origin and s3://bucket/replica)"
            )

    async def create(
        self,
        name: str,
        partitions: int | None,
        overrides: Mapping[str, str],
        *,
        validate_only: bool = False,
    ) -> tuple[Topic | None, int]:
        """CreateTopics with ``remote.readreplica``: look the topic up in the origin's archive,
        create it locally (origin's id, partition count and configs) and adopt the manifests
        before answering, so a consumer sees the archive at once. ``partitions`` None: the
        origin's count. Returns the topic (None for ``validate_only``) and its partition
        count."""
        url = str(overrides.get(CONFIG, "")).strip()
        if not url:
            raise InvalidConfig(f"{CONFIG}: an object store URL is required")
        from streamd.log.topic_config import EXTENSION_KEYS

        url = str(EXTENSION_KEYS[CONFIG].parse(CONFIG, url))
        extra = sorted(k for k in overrides if k != CONFIG)
        if extra:
            raise InvalidConfig(
                f"{', '.join(extra)}: a read replica takes its configs from its origin's topic "
                f"manifest; give only {CONFIG}"
            )
        self.check_origin_url(url)
        if name in self._replicas:
            await asyncio.to_thread(self._forget_files, name)
            self._replicas.pop(name, None)
        origin = self.origin(url)
        try:
            source = await find_origin_topic(origin.store, name)
        except StoreError as exc:
            raise RemoteStorageError(
                f"{CONFIG}: cannot read the archive at {url}: {exc}", code=ErrorCode.INVALID_CONFIG
            ) from None
        if partitions is not None and partitions != source.partition_count:
            raise InvalidPartitions(
                f"topic {name!r} has {source.partition_count} partition(s) at its origin {url}, "
                f"not the {partitions} requested: omit the partition count (-p) for a read "
                "replica"
            )
        manifests = await self._read_manifests(origin, name, source.topic_id,
                                               source.partition_count)
        configs = {**source.configs, CONFIG: url}
        self.logs.check_new_topic(name, source.partition_count, configs)
        if validate_only:
            return None, source.partition_count
        topic = self.logs.create_topic(
            name, source.partition_count, configs, topic_id=uuid.UUID(source.topic_id)
        )
        stamp = now_ms()
        replica = Replica(
            name=name,
            topic_id=source.topic_id,
            origin=url,
            partitions=[
                ReplicaPartition(
                    i, m, synced_at_ms=stamp, origin_last_offset=m.last_uploaded_offset
                )
                for i, m in enumerate(manifests)
            ],
            last_sync_ms=stamp,
            syncs=1,
        )
        self._replicas[name] = replica
        await asyncio.to_thread(self._save_state, replica)
        for part in replica.partitions:
            self._follow(replica, topic, part)
            await asyncio.to_thread(self._copies.save, part.manifest)
        log.info(
            "read replica %s of %s created: %d partition(s), offsets up to %s",
            name, url, len(manifests),
            ", ".join(str(p.manifest.last_uploaded_offset) for p in replica.partitions),
        )
        return topic, source.partition_count

    async def _read_manifests(
        self, origin: Origin, name: str, topic_id: str, count: int
    ) -> list[PartitionManifest]:
        async def one(index: int) -> PartitionManifest:
            async with self._sem:
                try:
                    found = await read_origin_manifest(origin.store, name, topic_id, index)
                except (RemoteStorageError, ManifestError) as exc:
                    raise RemoteStorageError(
                        f"{CONFIG}: manifest of {name}-{index} at {origin.url} is unreadable: "
                        f"{exc}", code=ErrorCode.INVALID_CONFIG,
                    ) from None
            return found or empty_origin_manifest(name, topic_id, index)

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    def _new_replica(self, topic: Topic, url: str) -> Replica:
        topic_id = str(topic.topic_id)
        parts = []
        for index in range(len(topic.partitions)):
            copy = self._copies.load(topic.name, topic_id, index)
            parts.append(ReplicaPartition(
                index, copy or empty_origin_manifest(topic.name, topic_id, index)
            ))
        return Replica(name=topic.name, topic_id=topic_id, origin=url, partitions=parts)

    async def on_topic_deleted(self, name: str) -> None:
        if self._replicas.pop(name, None) is not None:
            await asyncio.to_thread(self._forget_files, name)

    # ---- sync ----------------------------------------------------------------------------------

    async def sync(self, replica: Replica, *, unless_after: int | None = None) -> bool:
        """Re-read the origin's manifests of ``replica``; True when every one was read.
        ``unless_after``: a count of syncs; if more have happened meanwhile, do nothing (many
        reads finding the same object gone trigger one sync, not one each)."""
        topic = self.logs.get(replica.name)
        if topic is None or str(topic.topic_id) != replica.topic_id:
            return False
        async with replica.lock:
            if unless_after is not None and replica.syncs != unless_after:
                return True
            started = now_ms()
            origin = self.origin(replica.origin)
            if not replica.promoted:
                await self._sync_topic_manifest(replica, topic, origin)
            results = await asyncio.gather(
                *(self._sync_partition(replica, topic, origin, p, started)
                  for p in list(replica.partitions))
            )
            replica.syncs += 1
            ok = all(results) and replica.topic_error is None
            if ok:
                replica.last_sync_ms = started
            if replica.promoted:
                await self._apply_retention(replica, topic)
            return ok

    async def _sync_topic_manifest(self, replica: Replica, topic: Topic, origin: Origin) -> None:
        """Follow the origin's configs and partition count (nothing else changes a replica's)."""
        key = keys.topic_manifest_key(replica.name, replica.topic_id)
        try:
            async with self._sem:
                tm = load_topic_manifest(await origin.store.get(key))
        except ObjectNotFound:
            replica.topic_error = (
                f"the origin's topic manifest {key} is gone (topic deleted at the origin?); "
                "serving what was archived"
            )
            return
        except (RemoteStorageError, ManifestError) as exc:
            replica.topic_error = f"cannot read the origin's topic manifest {key}: {exc}"
            return
        replica.topic_error = None
        wanted = {**tm.configs, CONFIG: replica.origin}
        try:
            if wanted != topic.overrides:
                self.logs.alter_config(replica.name, wanted)
                log.info("read replica %s: configs follow the origin: %s", replica.name,
                         ", ".join(f"{k}={v}" for k, v in sorted(tm.configs.items())))
            if tm.partition_count > len(topic.partitions):
                self.logs.add_partitions(replica.name, tm.partition_count)
                for index in range(len(replica.partitions), tm.partition_count):
                    replica.partitions.append(ReplicaPartition(
                        index, empty_origin_manifest(replica.name, replica.topic_id, index)
                    ))
                await asyncio.to_thread(self._save_state, replica)
        except StreamdError as exc:
            replica.config_error = f"cannot apply the origin's topic manifest: {exc}"
        else:
            replica.config_error = None

    async def _sync_partition(
        self, replica: Replica, topic: Topic, origin: Origin, part: ReplicaPartition, started: int
    ) -> bool:
        try:
            async with self._sem:
                manifest = await read_origin_manifest(
                    origin.store, replica.name, replica.topic_id, part.index
                )
        except (RemoteStorageError, ManifestError) as exc:
            part.note_error(replica.name, f"cannot read the origin's manifest: {exc}")
            return False
        if manifest is None:
            if part.manifest.segments and not replica.promoted:
                part.note_error(
                    replica.name,
                    "the origin's manifest is gone (topic deleted at the origin?); serving "
                    f"offsets up to {part.manifest.last_uploaded_offset} as last synced",
                )
                return False
            part.synced_at_ms = started
            part.clear_error(replica.name)
            return True
        part.origin_last_offset = manifest.last_uploaded_offset
        if replica.promoted:
            self._follow_origin_start(replica, part, manifest)
        else:
            old = part.manifest
            if manifest.last_uploaded_offset < old.last_uploaded_offset:
                part.note_error(
                    replica.name,
                    f"the origin's archive went back from offset {old.last_uploaded_offset} to "
                    f"{manifest.last_uploaded_offset} (replaced or restored from an older "
                    "copy?); still serving the last manifest",
                )
                return False
            if manifest != old:
                part.manifest = manifest
                self._follow(replica, topic, part)
                await self._save_copy(manifest)
        part.synced_at_ms = started
        part.clear_error(replica.name)
        return True

    def _follow(self, replica: Replica, topic: Topic, part: ReplicaPartition) -> None:
        """Move the replica's empty local log to the archive's next offset and wake fetches."""
        if replica.promoted or part.index >= len(topic.partitions):
            return
        plog = topic.partitions[part.index]
        if part.next_offset > plog.log_end_offset:
            plog.truncate_fully_and_start_at(part.next_offset)
        self._on_moved(replica.name, part.index)

    def _follow_origin_start(
        self, replica: Replica, part: ReplicaPartition, manifest: PartitionManifest
    ) -> None:
        """A promoted replica's inherited archive: only the start follows the origin (its
        retention deletes objects below it), never the end (we diverged at promotion)."""
        inherited = part.manifest
        if manifest.remote_start_offset <= inherited.remote_start_offset:
            return
        target = min(manifest.remote_start_offset, inherited.next_offset)
        moved, removed = advance_remote_start(inherited, target)
        part.manifest = moved
        for seg in removed:
            self.cache.invalidate(seg.key)
        self._spawn_save(moved)

    async def _apply_retention(self, replica: Replica, topic: Topic) -> None:
        """Total retention of a promoted topic reaches its inherited archive first (it holds
        the oldest offsets); nothing is deleted from the origin's store, only the start moves."""
        retention_ms, retention_bytes = topic.config.retention_limits
        if retention_ms < 0 and retention_bytes < 0:
            return
        for part in replica.partitions:
            if not part.manifest.segments or part.index >= len(topic.partitions):
                continue
            plog = topic.partitions[part.index]
            others = plog.size_bytes + self._own_archive_bytes(replica.name, part.index)
            start = plan_remote_start(
                part.manifest, now_ms=now_ms(), retention_ms=retention_ms,
                retention_bytes=retention_bytes, local_bytes_not_archived=others,
            )
            if start is None:
                continue
            moved, removed = advance_remote_start(part.manifest, start)
            part.manifest = moved
            for seg in removed:
                self.cache.invalidate(seg.key)
            log.info("%s-%d: inherited archive starts at %d by retention", replica.name,
                     part.index, moved.remote_start_offset)
            await self._save_copy(moved)

    # ---- promotion -----------------------------------------------------------------------------

    async def promote(self, name: str) -> dict[int, int]:
        """Make the replica ``name`` a writable topic of this broker; returns each partition's
        next offset. Raises :class:`StreamdError` when it is not a replica or its origin's
        archive cannot be read now."""
        replica = self._replicas.get(name)
        topic = self.logs.get(name)
        if replica is None or topic is None or not topic.config.remote_readreplica:
            raise InvalidConfig(f"topic {name!r} is not a read replica")
        ok = await self.sync(replica)
        if not ok:
            problems = [
                f"{name}-{p.index}: {p.last_error}" for p in replica.partitions if p.last_error
            ]
            if replica.topic_error:
                problems.insert(0, replica.topic_error)
            raise RemoteStorageError(
                f"cannot promote {name}: its origin's archive at {replica.origin} must be read "
                f"first ({'; '.join(problems[:3]) or 'not synced'}); nothing changed",
                code=ErrorCode.INVALID_CONFIG,
            )
        async with replica.lock:
            for part in replica.partitions:
                self._follow(replica, topic, part)
            replica.promoted_at_ms = now_ms()
            await asyncio.to_thread(self._save_state, replica)
            await self._finish_promotion(replica, topic)
        nexts = {i: plog.log_end_offset for i, plog in enumerate(topic.partitions)}
        log.info("read replica %s of %s promoted: writable, next offsets %s", name,
                 replica.origin, nexts)
        return nexts

    async def _finish_promotion(self, replica: Replica, topic: Topic) -> None:
        """The promotion is recorded: drop ``remote.readreplica``, archive here from now on."""
        overrides = {k: v for k, v in topic.overrides.items() if k != CONFIG}
        if not self.logs.validate_overrides(overrides).remote_storage_enable:
            overrides["remote.storage.enable"] = "true"
        self.logs.alter_config(topic.name, overrides)
        changed = self.logs.get(topic.name)
        if self._on_promoted is not None and changed is not None:
            await self._on_promoted(changed)

    async def delete_records(self, topic: str, partition: int, offset: int) -> None:
        """DeleteRecords on a promoted replica reaches its inherited archive too (its start
        moves; the origin's objects stay). Replicas themselves refuse DeleteRecords earlier."""
        replica = self._replicas.get(topic)
        if replica is None or not replica.promoted or partition >= len(replica.partitions):
            return
        part = replica.partitions[partition]
        target = min(offset, part.manifest.next_offset)
        if target <= part.manifest.remote_start_offset:
            return
        part.manifest, removed = advance_remote_start(part.manifest, target)
        for seg in removed:
            self.cache.invalidate(seg.key)
        await self._save_copy(part.manifest)

    # ---- reads ---------------------------------------------------------------------------------

    def manifest(self, topic: str, partition: int) -> PartitionManifest | None:
        """The borrowed archive of a partition (a replica's, or a promoted one's inherited)."""
        replica = self._replicas.get(topic)
        if replica is None or partition >= len(replica.partitions):
            return None
        return replica.partitions[partition].manifest

    def prefetch(self, topic: str, partition: int, offset: int) -> None:
        replica = self._replicas.get(topic)
        if replica is not None and partition < len(replica.partitions):
            self.origin(replica.origin).reader.prefetch(
                replica.partitions[partition].manifest, offset
            )

    async def read(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_bytes: int,
        min_one: bool,
        *,
        below: int | None = None,
    ) -> bytes | memoryview:
        """Whole batches from ``offset`` out of the origin's archive. An object found missing
        (the origin's retention deleted it after our last sync) re-reads the manifest first:
        below its new start the answer is OFFSET_OUT_OF_RANGE, as for any retention."""
        replica = self._replicas.get(topic)
        if replica is None or partition >= len(replica.partitions):
            raise OffsetOutOfRange(f"{topic}-{partition} is not a read replica")
        part = replica.partitions[partition]
        reader = self.origin(replica.origin).reader
        syncs = replica.syncs
        try:
            return await reader.read(part.manifest, offset, max_bytes, min_one, below=below)
        except ObjectNotFound:
            await self.sync(replica, unless_after=syncs)
            if offset < part.manifest.remote_start_offset:
                raise OffsetOutOfRange(
                    f"offset {offset} of {topic}-{partition} was removed by its origin's "
                    f"retention; the archive now starts at {part.manifest.remote_start_offset}"
                ) from None
            return await reader.read(part.manifest, offset, max_bytes, min_one, below=below)

    async def aborted_transactions(
        self, topic: str, partition: int, fetch_offset: int, upper: int
    ) -> tuple[list[AbortedTxn], bool]:
        """read_committed: the aborted transactions of ``[fetch_offset, upper)`` from the
        origin's archived transaction indexes, and whether they settle it."""
        replica = self._replicas.get(topic)
        if replica is None or partition >= len(replica.partitions):
            return [], False
        part = replica.partitions[partition]
        reader = self.origin(replica.origin).reader
        syncs = replica.syncs
        try:
            return await reader.aborted_transactions(part.manifest, fetch_offset, upper)
        except ObjectNotFound:
            await self.sync(replica, unless_after=syncs)
            if fetch_offset < part.manifest.remote_start_offset:
                raise OffsetOutOfRange(
                    f"offset {fetch_offset} of {topic}-{partition} was removed by its origin's "
                    f"retention; the archive now starts at {part.manifest.remote_start_offset}"
                ) from None
            return await reader.aborted_transactions(part.manifest, fetch_offset, upper)

    async def offset_for_timestamp(
        self, topic: str, partition: int, timestamp: int, below: int
    ) -> tuple[int, int] | None:
        replica = self._replicas.get(topic)
        if replica is None or partition >= len(replica.partitions):
            return None
        part = replica.partitions[partition]
        if not part.manifest.segments:
            return None
        return await self.origin(replica.origin).reader.offset_for_timestamp(
            part.manifest, timestamp, below
        )

    # ---- observability -------------------------------------------------------------------------

    def describe(self, name: str, report: dict[str, Any]) -> None:
        """Add the origin, the last sync and the lag behind the origin's archive to a
        ``/v1/topics/{topic}/storage`` report (in place)."""
        replica = self._replicas.get(name)
        if replica is None:
            return
        now = now_ms()
        report["origin"] = replica.origin
        report["origin_topic_id"] = replica.topic_id
        report["read_replica"] = "promoted" if replica.promoted else "replica"
        report["sync_interval_ms"] = self.sync_interval_ms
        report["last_sync_ms"] = replica.last_sync_ms
        report["sync_age_ms"] = now - replica.last_sync_ms if replica.last_sync_ms >= 0 else -1
        if replica.promoted:
            report["promoted_at_ms"] = replica.promoted_at_ms
        for error in (replica.topic_error, replica.config_error):
            if error:
                report["origin_error"] = error
        for entry in report.get("partitions", []):
            index = entry.get("partition")
            if not isinstance(index, int) or index >= len(replica.partitions):
                continue
            part = replica.partitions[index]
            m = part.manifest
            lag = max(0, part.origin_last_offset - m.last_uploaded_offset)
            fields: dict[str, Any] = {
                "origin_last_offset": part.origin_last_offset,
                "last_sync_ms": part.synced_at_ms,
                "lag_offsets": 0 if replica.promoted else lag,
                "sync_errors": part.errors,
            }
            if replica.promoted:
                fields.update(
                    inherited_start_offset=m.remote_start_offset if m.segments else -1,
                    inherited_last_offset=m.last_uploaded_offset,
                    inherited_bytes=m.size_bytes,
                    inherited_segments=len(m.segments),
                )
                if m.segments and entry.get("earliest_offset", m.remote_start_offset) >= 0:
                    entry["earliest_offset"] = min(
                        entry.get("earliest_offset", m.remote_start_offset), m.remote_start_offset
                    )
            else:
                fields.update(
                    mode="read-replica",
                    remote_start_offset=m.remote_start_offset if m.segments else -1,
                    last_uploaded_offset=m.last_uploaded_offset,
                    remote_bytes=m.size_bytes,
                    remote_segments=len(m.segments),
                    earliest_offset=m.remote_start_offset if m.segments else part.next_offset,
                    pending_uploads=0,
                    manifest_loaded=True,
                    incarnation=m.incarnation or None,
                )
                if part.last_error is not None:
                    fields["last_error"] = part.last_error
                    fields["errors"] = part.errors
            entry.update(fields)

    def health(self) -> dict[str, Any]:
        """The ``read_replicas`` component of ``/v1/health``: degraded while a replica's last
        sync failed (it serves its last manifests meanwhile)."""
        failing = []
        oldest = -1
        for replica in self._replicas.values():
            if replica.promoted:
                continue
            failing += [
                f"{replica.name}: {e}" for e in (replica.topic_error, replica.config_error) if e
            ]
            failing += [
                f"{replica.name}-{p.index}: {p.last_error}"
                for p in replica.partitions
                if p.last_error
            ]
            if replica.last_sync_ms >= 0:
                age = now_ms() - replica.last_sync_ms
                oldest = max(oldest, age)
        return {
            "status": "degraded" if failing else "ok",
            "replicas": sum(1 for r in self._replicas.values() if not r.promoted),
            "promoted": sum(1 for r in self._replicas.values() if r.promoted),
            "max_sync_age_ms": oldest,
            "errors": failing[:10],
        }

    def metric_families(self) -> Iterable[Family]:
        ages: list[tuple[dict[str, str], float]] = []
        lags: list[tuple[dict[str, str], float]] = []
        now = now_ms()
        for replica in self._replicas.values():
            if replica.promoted:
                continue
            labels = {"topic": replica.name, "origin": replica.origin}
            ages.append((labels, (now - replica.last_sync_ms) / 1000
                         if replica.last_sync_ms >= 0 else -1))
            lags.append((labels, sum(
                max(0, p.origin_last_offset - p.manifest.last_uploaded_offset)
                for p in replica.partitions
            )))
        requests: list[tuple[dict[str, str], float]] = []
        for origin in self._origins.values():
            counts = origin.store.requests
            requests += [({"origin": origin.url, "verb": v}, counts.get(v, 0)) for v in VERBS]
        return [
            ("streamd_readreplica_sync_age_seconds", "Time since a read replica last read its "
             "origin's manifests.", "gauge", ages),
            ("streamd_readreplica_lag_offsets", "Offsets the origin archived that a replica "
             "does not serve yet.", "gauge", lags),
            ("streamd_readreplica_origin_requests_total", "Requests sent to origin stores, by "
             "verb.", "counter", requests),
            ("streamd_readreplica_download_bytes_total", "Bytes read from origin stores.",
             "counter", [({}, self.stats.downloaded_bytes)]),
        ]

    # ---- files ---------------------------------------------------------------------------------

    def _state_path(self, name: str) -> Path:
        keys.validate_topic(name)
        return self.state_dir / f"{name}.json"

    def _save_state(self, replica: Replica) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._state_path(replica.name), replica.state_doc())

    def _load_state(self, path: Path) -> Replica | None:
        try:
            body = open_document(path.read_bytes(), STATE_KIND, "read replica state")
            name, topic_id = str(body["topic"]), str(body["topic_id"])
            origin, promoted = str(body["origin"]), int(body["promoted_at_ms"])
            keys.validate_topic(name)
        except (OSError, ManifestError, KeyError, TypeError, ValueError, StreamdError) as exc:
            log.warning("ignoring read replica state %s: %s", path, exc)
            return None
        topic = self.logs.get(name)
        count = len(topic.partitions) if topic is not None else 0
        parts = [
            ReplicaPartition(
                i,
                self._copies.load(name, topic_id, i) or empty_origin_manifest(name, topic_id, i),
            )
            for i in range(count)
        ]
        return Replica(name=name, topic_id=topic_id, origin=origin, partitions=parts,
                       promoted_at_ms=promoted)

    def _forget_files(self, name: str) -> None:
        try:
            self._state_path(name).unlink(missing_ok=True)
            self._copies.drop_topic(name)
        except (OSError, StreamdError) as exc:
            log.warning("cannot remove read replica state of %r: %s", name, exc)

    async def _save_copy(self, manifest: PartitionManifest) -> None:
        try:
            await asyncio.to_thread(self._copies.save, manifest)
        except OSError as exc:
            log.warning("cannot keep a local copy of a replica manifest: %s", exc)

    def _spawn_save(self, manifest: PartitionManifest) -> None:
        task = asyncio.ensure_future(self._save_copy(manifest))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
