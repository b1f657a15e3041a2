"""All topics on local disk.

Layout::

    data_dir/topics/<topic>/topic.json       {"format": 1, "topic_id": hex, "name", "partitions",
                                              "overrides": {config: value}}
    data_dir/topics/<topic>/<partition>/     segments of one partition (see partition.py)
    data_dir/trash/                          topics being deleted (renamed here, then removed)

``topic.json`` is replaced atomically and is the source of truth: a topic exists once its file
does, partition directories beyond its count are ignored, and missing ones are created empty.
Topic names are validated before any path is built from them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamd.errors import (
    InvalidConfig,
    InvalidPartitions,
    StorageError,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)
from streamd.log.files import atomic_write
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
    may_delete: MayDelete | None = field(default=None, repr=False)
    """Tiering's veto on local deletion of a segment (not yet archived)."""

    def metadata(self) -> dict[str, object]:
        return {
            "format": FORMAT_VERSION,
            "topic_id": self.topic_id.hex,
            "name": self.name,
            "partitions": len(self.partitions),
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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.topics_dir = self.data_dir / "topics"
        self.trash_dir = self.data_dir / "trash"
        self.fsync = fsync or FsyncPolicy("never")
        self.flusher = SharedFlusher(FilesystemSync(self.data_dir) if syncfs else None)
        self.page_cache_window = page_cache_window
        self._defaults = dict(defaults or {})
        TopicConfig.from_overrides(self._defaults, {})
        self._topics: dict[str, Topic] = {}
        self.tiering_veto: TieringVeto | None = None
        """Set by tiering: ``(topic, partition, segment) -> True`` once the segment is archived.
        Consulted for tiered topics without their own ``Topic.may_delete``."""

    @property
    def defaults(self) -> dict[str, str]:
        return dict(self._defaults)

    def load(self) -> None:
        """Open every topic and partition found on disk, running recovery."""
        self.topics_dir.mkdir(parents=True, exist_ok=True)
        if self.trash_dir.exists():
            shutil.rmtree(self.trash_dir)
        for entry in sorted(self.topics_dir.iterdir()):
            meta_path = entry / TOPIC_FILE
            if not entry.is_dir() or entry.name.endswith(".tmp"):
                continue
            if not meta_path.exists():
                log.warning("ignoring %s: no %s", entry, TOPIC_FILE)
                continue
            try:
                meta = json.loads(meta_path.read_text())
                name = meta["name"]
                validate_topic_name(name)
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
        plog = PartitionLog.open(topic_dir / str(index), config, fsync=self.fsync)
        plog.flusher = self.flusher
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

    def create_topic(
        self,
        name: str,
        partitions: int,
        overrides: Mapping[str, str] | None = None,
        *,
        topic_id: uuid.UUID | None = None,
    ) -> Topic:
        validate_topic_name(name)
        if name in self._topics:
            raise TopicAlreadyExists(f"topic {name!r} already exists")
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise InvalidPartitions(
                f"partition count must be 1..{MAX_PARTITIONS}, got {partitions}"
            )
        overrides = {str(k): str(v) for k, v in (overrides or {}).items()}
        config = TopicConfig.from_overrides(self._defaults, overrides)
        directory = self.topics_dir / name
        if directory.exists():
            raise TopicAlreadyExists(f"topic directory {directory} already exists")
        self.topics_dir.mkdir(parents=True, exist_ok=True)
        staging = self.topics_dir / f"{name}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()
        topic = Topic(name, topic_id or uuid.uuid4(), [], overrides, config, directory)
        atomic_write(staging / TOPIC_FILE, _encode(topic.metadata() | {"partitions": partitions}))
        os.rename(staging, directory)
        topic.partitions = [self._open_partition(directory, i, config) for i in range(partitions)]
        self._topics[name] = topic
        return topic

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

    def add_partitions(self, name: str, new_total: int) -> Topic:
        topic = self._require(name)
        current = len(topic.partitions)
        if new_total <= current:
            raise InvalidPartitions(
                f"topic {name!r} has {current} partitions; the new count must be larger, "
                f"got {new_total}"
            )
        if new_total > MAX_PARTITIONS:
            raise InvalidPartitions(f"partition count must be at most {MAX_PARTITIONS}")
        added = [
            self._open_partition(topic.directory, i, topic.config)
            for i in range(current, new_total)
        ]
        topic.partitions.extend(added)
        self._write_metadata(topic)
        return topic

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
        ``remote.storage.enable`` the local retention limits apply and ``Topic.may_delete`` or
        else ``tiering_veto`` (tiering) may veto deletions; otherwise the total retention
        limits apply.
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
            for index, partition in enumerate(topic.partitions):
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
        return removed

    def _local_veto(self, topic: Topic, index: int) -> MayDelete:
        if topic.may_delete is not None:
            return topic.may_delete
        veto = self.tiering_veto
        if veto is None:
            return _always
        return lambda segment: veto(topic.name, index, segment)

    async def flush_all(self) -> None:
        """Fsync every partition (the interval policy's timer)."""
        for topic in list(self._topics.values()):
            for partition in topic.partitions:
                await partition.flush()

    async def close(self) -> None:
        for topic in list(self._topics.values()):
            for partition in topic.partitions:
                await partition.close()
        self._topics.clear()
        if self.flusher.fs_sync is not None:
            self.flusher.fs_sync.close()


def _always(segment: Segment) -> bool:
    return True


def _encode(meta: Mapping[str, object]) -> bytes:
    return (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
