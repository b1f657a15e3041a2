"""All topics on local disk.

Layout::

    data_dir/topics/<topic>/topic.json       {"format": 1, "topic_id": hex, "name", "partitions",
                                              "overrides": {config: value}}
    data_dir/topics/<topic>/<partition>/     segments of one partition (see partition.py)
    data_dir/staging/<uuid>/                 a topic being created (renamed into topics/)
    data_dir/trash/                          topics being deleted (renamed here, then removed)

``topic.json`` is replaced atomically and is the source of truth: a topic exists once its file
does, partition directories beyond its count are ignored, and missing ones are created empty.
Topic names are validated before any path is built from them, and every valid Kafka name
works: nothing but the topic's own directory is named after it (a staging directory beside it
would add to a name of up to 249 characters, or end in a suffix a topic name may have too).

Limits are checked before anything is written: ``MAX_PARTITIONS`` per topic
(INVALID_PARTITIONS) and, for what clients ask (the ``*_async`` methods the Kafka handlers use),
at most ``max_partitions`` partitions on the broker, counting every topic (POLICY_VIOLATION).
The broker's own topics and ``streamd restore`` (the blocking methods) are not refused by that
policy. Creating a topic or adding partitions from the event loop runs in a worker thread
(``create_topic_async``, ``add_partitions_async``); the topic becomes visible on the loop once it
is complete.
Open file descriptors do not grow with the partition count (see
:mod:`streamd.log.descriptors`), so any data directory the broker wrote can be opened again.

Local deletion of a tiered topic's segments needs the tiering veto's consent (invariant 4); the
veto is given at construction and without one nothing tiered is deleted (fail closed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamd.errors import (
    InvalidConfig,
    InvalidPartitions,
    PolicyViolation,
    StorageError,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)
from streamd.log.disk import DiskMonitor
from streamd.log.files import atomic_write, fsync_dir
from streamd.log.flusher import SharedFlusher
from streamd.log.fsync import FsyncPolicy
from streamd.log.names import validate_topic_name
from streamd.log.partition import PartitionLog, now_ms
from streamd.log.segment import Segment
from streamd.log.syncfs import FilesystemSync
from streamd.log.topic_config import TOPIC_CONFIG_KEYS, TopicConfig, upgrade_stored

__all__ = ["FsyncPolicy", "LogManager", "Topic"]

log = logging.getLogger("streamd.log")

FORMAT_VERSION = 1
TOPIC_FILE = "topic.json"
MAX_PARTITIONS = 100_000
"""Per topic (INVALID_PARTITIONS above it)."""
DEFAULT_MAX_PARTITIONS = 10_000
"""Per broker by default (POLICY_VIOLATION above it): what one broker process opens, recovers
and keeps in memory comfortably (about 0.5 ms and a few KiB per partition)."""
_OLD_STAGING = re.compile(r"(.+)\.[0-9a-f]{32}\.tmp")

MayDelete = Callable[[Segment], bool]
TieringVeto = Callable[[str, int, Segment], bool]


@dataclass(eq=False)
class Topic:
    name: str
    topic_id: uuid.UUID
    partitions: list[PartitionLog]
    overrides: dict[str, str]
    config: TopicConfig
    directory: Path

    def metadata(self, partitions: int | None = None) -> dict[str, object]:
        return {
            "format": FORMAT_VERSION,
            "topic_id": self.topic_id.hex,
            "name": self.name,
            "partitions": len(self.partitions) if partitions is None else partitions,
            "overrides": dict(sorted(self.overrides.items())),
        }


class LogManager:
    def __init__(
        self,
        data_dir: Path,
        *,
        defaults: Mapping[str, str] | None = None,
        fsync: FsyncPolicy | None = None,
        page_cache_window: int = -1,
        syncfs: bool = False,
        tiering_veto: TieringVeto | None = None,
        max_partitions: int = DEFAULT_MAX_PARTITIONS,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.topics_dir = self.data_dir / "topics"
        self.staging_dir = self.data_dir / "staging"
        self.trash_dir = self.data_dir / "trash"
        self.fsync = fsync or FsyncPolicy("never")
        self.flusher = SharedFlusher(FilesystemSync(self.data_dir) if syncfs else None)
        self.disk = DiskMonitor(self.data_dir)
        self.page_cache_window = page_cache_window
        self.max_partitions = max_partitions
        self._defaults = dict(defaults or {})
        TopicConfig.from_overrides(self._defaults, {})
        self._topics: dict[str, Topic] = {}
        self._reserved: dict[str, int] = {}
        """Topics being created or grown off the loop: name -> partitions being added."""
        self.tiering_veto: TieringVeto | None = tiering_veto
        """``(topic, partition, segment) -> True`` once the segment is archived; consulted before
        a tiered topic's segment leaves local disk. None: nothing tiered is deleted."""

    @property
    def defaults(self) -> dict[str, str]:
        return dict(self._defaults)

    @property
    def partition_count(self) -> int:
        """Partitions on the broker, counting those being created."""
        return sum(len(t.partitions) for t in self._topics.values()) + sum(
            self._reserved.values()
        )

    def load(self) -> None:
        """Open every topic and partition found on disk, running recovery. Needs no free
        space: a full disk still opens (read-only until space frees)."""
        self.topics_dir.mkdir(parents=True, exist_ok=True)
        for leftover in (self.trash_dir, self.staging_dir):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
        for entry in sorted(self.topics_dir.iterdir()):
            meta_path = entry / TOPIC_FILE
            if not entry.is_dir():
                continue
            if not meta_path.exists():
                log.warning("ignoring %s: no %s", entry, TOPIC_FILE)
                continue
            try:
                meta = json.loads(meta_path.read_text())
                name = meta["name"]
                validate_topic_name(name)
                old = _OLD_STAGING.fullmatch(entry.name)
                if name != entry.name and old is not None and old.group(1) == name:
                    log.warning("removing %s: an unfinished topic creation", entry)
                    shutil.rmtree(entry, ignore_errors=True)
                    continue
                if name != entry.name or meta.get("format") != FORMAT_VERSION:
                    raise ValueError("name or format version does not match")
                topic_id = uuid.UUID(hex=meta["topic_id"])
                count = int(meta["partitions"])
                overrides = {str(k): str(v) for k, v in meta["overrides"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise StorageError(f"unreadable topic metadata {meta_path}: {exc}") from exc
            overrides = upgrade_stored(overrides)
            config = TopicConfig.from_overrides(self._defaults, overrides)
            partitions = [self._open_partition(entry, i, config) for i in range(count)]
            self._topics[name] = Topic(name, topic_id, partitions, overrides, config, entry)

    def _open_partition(self, topic_dir: Path, index: int, config: TopicConfig) -> PartitionLog:
        plog = PartitionLog.open(
            topic_dir / str(index), config, fsync=self.fsync, flusher=self.flusher, disk=self.disk
        )
        plog.page_cache_window = self.page_cache_window
        return plog

    # ---- lookups -------------------------------------------------------------------------------

    def get(self, name: str) -> Topic | None:
        return self._topics.get(name)

    def topics(self) -> dict[str, Topic]:
        return dict(self._topics)

    def partition(self, name: str, index: int) -> PartitionLog:
        topic = self._topics.get(name)
        if topic is None or not 0 <= index < len(topic.partitions):
            raise UnknownTopicOrPartition(f"unknown topic or partition {name}-{index}")
        return topic.partitions[index]

    def _require(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            raise UnknownTopicOrPartition(f"unknown topic {name!r}")
        return topic

    # ---- changes -------------------------------------------------------------------------------

    def check_new_topic(
        self,
        name: str,
        partitions: int,
        overrides: Mapping[str, str] | None = None,
        *,
        policy: bool = True,
    ) -> TopicConfig:
        """Every check a creation makes before it writes anything (with ``policy``, the broker
        partition limit too); returns the config."""
        validate_topic_name(name)
        if name in self._topics or name in self._reserved:
            raise TopicAlreadyExists(f"topic {name!r} already exists")
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise InvalidPartitions(
                f"partition count must be 1..{MAX_PARTITIONS}, got {partitions}"
            )
        if policy:
            self._check_room(partitions)
        config = TopicConfig.from_overrides(
            self._defaults, {str(k): str(v) for k, v in (overrides or {}).items()}
        )
        if (self.topics_dir / name).exists():
            raise TopicAlreadyExists(
                f"topic {name!r} cannot be created: files of an earlier topic of that name "
                "are still on the broker's disk"
            )
        return config

    def _check_room(self, adding: int) -> None:
        total = self.partition_count
        if total + adding > self.max_partitions:
            raise PolicyViolation(
                f"the broker holds {total} partitions; {adding} more would exceed its limit of "
                f"{self.max_partitions} (log.max_partitions)"
            )

    def create_topic(
        self,
        name: str,
        partitions: int,
        overrides: Mapping[str, str] | None = None,
        *,
        topic_id: uuid.UUID | None = None,
    ) -> Topic:
        """Create a topic here and now (blocking: the broker's own topics, restore, tests),
        without the partition-limit policy. The Kafka handlers use :meth:`create_topic_async`."""
        self.check_new_topic(name, partitions, overrides, policy=False)
        topic = self._build_topic(name, partitions, overrides or {}, topic_id)
        self._topics[name] = topic
        return topic

    async def create_topic_async(
        self,
        name: str,
        partitions: int,
        overrides: Mapping[str, str] | None = None,
        *,
        topic_id: uuid.UUID | None = None,
    ) -> Topic:
        """:meth:`create_topic` with the disk work in a worker thread. The name and the
        partitions are reserved meanwhile, so a concurrent creation of the same name is
        TOPIC_ALREADY_EXISTS and the broker limit holds across concurrent requests."""
        self.check_new_topic(name, partitions, overrides)
        self._reserved[name] = partitions
        try:
            topic = await asyncio.to_thread(
                self._build_topic, name, partitions, overrides or {}, topic_id
            )
        finally:
            del self._reserved[name]
        self._topics[name] = topic
        return topic

    def _build_topic(
        self,
        name: str,
        partitions: int,
        overrides: Mapping[str, str],
        topic_id: uuid.UUID | None,
    ) -> Topic:
        """Write the topic to disk and open its partitions; all or nothing (a crash midway
        leaves a topic whose missing partitions are created empty when it is loaded)."""
        overrides = {str(k): str(v) for k, v in overrides.items()}
        config = TopicConfig.from_overrides(self._defaults, overrides)
        directory = self.topics_dir / name
        topic = Topic(name, topic_id or uuid.uuid4(), [], overrides, config, directory)
        try:
            self.topics_dir.mkdir(parents=True, exist_ok=True)
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            staging = self.staging_dir / uuid.uuid4().hex
            staging.mkdir()
            atomic_write(staging / TOPIC_FILE, _encode(topic.metadata(partitions)))
            os.rename(staging, directory)
            fsync_dir(self.topics_dir)
        except OSError as exc:
            self.disk.note(exc)
            raise StorageError(f"cannot create topic {name!r}: {exc.strerror}") from exc
        try:
            for i in range(partitions):
                topic.partitions.append(self._open_partition(directory, i, config))
        except (OSError, StorageError) as exc:
            self.disk.note(exc)
            self._remove_dir(topic)
            reason = exc.strerror if isinstance(exc, OSError) else exc
            raise StorageError(f"cannot create topic {name!r}: {reason}") from exc
        return topic

    def _remove_dir(self, topic: Topic) -> None:
        for partition in topic.partitions:
            partition.discard()
        trash = self.trash_dir / uuid.uuid4().hex
        try:
            self.trash_dir.mkdir(parents=True, exist_ok=True)
            os.rename(topic.directory, trash)
        except OSError:
            trash = topic.directory
        shutil.rmtree(trash, ignore_errors=True)

    async def delete_topic(self, name: str) -> None:
        """Forget the topic at once (atomic rename into trash), then remove its files off the
        event loop; a crash in between leaves only trash, which ``load`` clears."""
        topic = self._require(name)
        del self._topics[name]
        for partition in topic.partitions:
            partition.discard()
        self.trash_dir.mkdir(parents=True, exist_ok=True)
        trash = self.trash_dir / uuid.uuid4().hex
        os.rename(topic.directory, trash)
        await asyncio.to_thread(shutil.rmtree, trash, True)

    def check_growth(self, name: str, new_total: int, *, policy: bool = True) -> Topic:
        """Every check adding partitions makes before it writes anything."""
        topic = self._require(name)
        if name in self._reserved:
            raise InvalidPartitions(f"topic {name!r} is already being changed; retry")
        current = len(topic.partitions)
        if new_total <= current:
            raise InvalidPartitions(
                f"topic {name!r} has {current} partitions; the new count must be larger, "
                f"got {new_total}"
            )
        if new_total > MAX_PARTITIONS:
            raise InvalidPartitions(f"partition count must be at most {MAX_PARTITIONS}")
        if policy:
            self._check_room(new_total - current)
        return topic

    def add_partitions(self, name: str, new_total: int) -> Topic:
        """Blocking and without the partition-limit policy (see :meth:`create_topic`)."""
        topic = self.check_growth(name, new_total, policy=False)
        topic.partitions.extend(self._grow(topic, len(topic.partitions), new_total))
        return topic

    async def add_partitions_async(self, name: str, new_total: int) -> Topic:
        """:meth:`add_partitions` with the disk work in a worker thread."""
        topic = self.check_growth(name, new_total)
        current = len(topic.partitions)
        self._reserved[name] = new_total - current
        try:
            added = await asyncio.to_thread(self._grow, topic, current, new_total)
        finally:
            del self._reserved[name]
        if self._topics.get(name) is not topic:
            for partition in added:
                partition.discard()
            raise UnknownTopicOrPartition(f"topic {name!r} was deleted meanwhile")
        topic.partitions.extend(added)
        return topic

    def _grow(self, topic: Topic, current: int, new_total: int) -> list[PartitionLog]:
        added: list[PartitionLog] = []
        try:
            for i in range(current, new_total):
                added.append(self._open_partition(topic.directory, i, topic.config))
            atomic_write(topic.directory / TOPIC_FILE, _encode(topic.metadata(new_total)))
        except (OSError, StorageError) as exc:
            self.disk.note(exc)
            for partition in added:
                partition.discard()
            reason = exc.strerror if isinstance(exc, OSError) else exc
            raise StorageError(f"cannot add partitions to {topic.name!r}: {reason}") from exc
        return added

    def alter_config(self, name: str, overrides: Mapping[str, str]) -> Topic:
        """Replace every override of a topic."""
        topic = self._require(name)
        new = {str(k): str(v) for k, v in overrides.items()}
        self._apply_overrides(topic, new)
        return topic

    def update_config(
        self, name: str, set: Mapping[str, str] | None = None, delete: Sequence[str] = ()
    ) -> Topic:
        """Incremental change: set some overrides, remove others (back to the default)."""
        topic = self._require(name)
        new = dict(topic.overrides)
        new.update({str(k): str(v) for k, v in (set or {}).items()})
        for key in delete:
            if key not in TOPIC_CONFIG_KEYS:
                raise InvalidConfig(f"{key}: unknown topic config")
            new.pop(key, None)
        self._apply_overrides(topic, new)
        return topic

    def validate_overrides(self, overrides: Mapping[str, str]) -> TopicConfig:
        """What ``create_topic`` would use, without creating anything (validate-only)."""
        return TopicConfig.from_overrides(self._defaults, overrides)

    def _apply_overrides(self, topic: Topic, overrides: dict[str, str]) -> None:
        config = TopicConfig.from_overrides(self._defaults, overrides)
        topic.overrides = overrides
        topic.config = config
        self._write_metadata(topic)
        for partition in topic.partitions:
            partition.update_config(config)

    def set_defaults(self, defaults: Mapping[str, str]) -> None:
        """Change the broker-wide topic defaults; every topic's effective config follows."""
        defaults = {str(k): str(v) for k, v in defaults.items()}
        configs = {}
        for name, topic in self._topics.items():
            try:
                configs[name] = TopicConfig.from_overrides(defaults, topic.overrides)
            except InvalidConfig as exc:
                raise InvalidConfig(f"{exc} (with the overrides of topic {name!r})") from exc
        if not configs:
            TopicConfig.from_overrides(defaults, {})
        self._defaults = defaults
        for name, config in configs.items():
            topic = self._topics[name]
            topic.config = config
            for partition in topic.partitions:
                partition.update_config(config)

    def _write_metadata(self, topic: Topic) -> None:
        atomic_write(topic.directory / TOPIC_FILE, _encode(topic.metadata()))

    # ---- background ----------------------------------------------------------------------------

    async def run_housekeeping(self, now: int | None = None) -> dict[str, list[Segment]]:
        """Roll due segments, apply local retention, fsync partitions whose interval is due.

        Returns the removed segments per ``topic-partition``. For topics with
        ``remote.storage.enable`` the local retention limits apply and ``tiering_veto`` must
        consent to each deletion; otherwise the total retention limits apply. One partition's
        failure (a full disk) does not stop the others.
        """
        now = now_ms() if now is None else now
        removed: dict[str, list[Segment]] = {}
        for topic in list(self._topics.values()):
            config = topic.config
            tiered = config.remote_storage_enable
            if tiered:
                retention_ms, retention_bytes = config.local_retention_limits
            else:
                retention_ms, retention_bytes = config.retention_limits
            for index, partition in enumerate(list(topic.partitions)):
                if partition.closed:
                    continue
                try:
                    partition.roll_if_due(now)
                    gone = partition.apply_retention(
                        now,
                        retention_ms=retention_ms,
                        retention_bytes=retention_bytes,
                        may_delete=self._local_veto(topic, index) if tiered else _always,
                    )
                    if gone:
                        removed[f"{topic.name}-{index}"] = gone
                    interval = self.fsync.interval_ms
                    if self.fsync.mode == "interval" and now - partition.last_flush_ms >= interval:
                        await partition.flush()
                except (OSError, StorageError) as exc:
                    log.warning("housekeeping of %s-%d: %s", topic.name, index, exc)
        self.disk.refresh()
        return removed

    def _local_veto(self, topic: Topic, index: int) -> MayDelete:
        veto = self.tiering_veto
        if veto is None:
            return _never
        return lambda segment: veto(topic.name, index, segment)

    async def flush_all(self) -> None:
        """Fsync every partition (the interval policy's timer)."""
        for topic in list(self._topics.values()):
            for partition in topic.partitions:
                await partition.flush()

    async def close(self) -> None:
        """Close every partition (each flushes what was staged first); errors are logged, so
        one failing partition does not keep the others from closing cleanly."""
        for topic in list(self._topics.values()):
            for partition in topic.partitions:
                try:
                    await partition.close()
                except (OSError, StorageError) as exc:
                    log.error("closing %s: %s", partition.name, exc)
        self._topics.clear()
        if self.flusher.fs_sync is not None:
            self.flusher.fs_sync.close()


def _always(segment: Segment) -> bool:
    return True


def _never(segment: Segment) -> bool:
    return False


def _encode(meta: Mapping[str, object]) -> bytes:
    return (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
