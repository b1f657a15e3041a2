"""What tiering knows about one partition, and the local copy of its manifest.

``manifest`` is always a manifest that was successfully stored in the bucket (or read back from
it): local retention trusts it to say what is archived (invariant 4), and remote reads trust it
to name only objects that exist (invariant 3).

``loaded`` is True once the manifest came from the bucket (or was recovered, see
:mod:`streamd.tiering.service`). Until then the partition uploads nothing: starting from an empty
manifest while the bucket is unreachable would overwrite the real one. Meanwhile the local copy
(written after every successful manifest store, so never ahead of the bucket, and when a new
history starts, so that its incarnation survives a restart) serves the local-deletion veto and
remote reads.

``last_error`` is the failure of the last attempt (cleared by the next success) and makes the
partition "degraded" in ``/v1/health``; ``notice`` records the last event an operator should
know of although nothing is failing now (a manifest recovered from the local copy, objects found
without a manifest).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from streamd.log.files import atomic_write
from streamd.tiering import keys
from streamd.tiering.manifest import (
    ManifestError,
    PartitionManifest,
    dump_partition_manifest,
    empty_manifest,
    load_partition_manifest,
)

log = logging.getLogger("streamd.tiering")


@dataclass(eq=False)
class PartitionState:
    topic: str
    topic_id: str
    partition: int
    manifest: PartitionManifest
    loaded: bool = False
    last_upload_ms: int = -1
    errors: int = 0
    last_error: str | None = None
    blocked: str | None = None
    pending_uploads: int = 0
    pending_deletes: list[str] = field(default_factory=list)
    notice: str | None = None
    from_copy: bool = False
    """``manifest`` came from the local copy and has not been confirmed by the bucket yet."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @classmethod
    def new(cls, topic: str, topic_id: str, partition: int) -> PartitionState:
        return cls(topic, topic_id, partition, empty_manifest(topic, topic_id, partition))

    @property
    def manifest_key(self) -> str:
        return keys.partition_manifest_key(self.topic, self.topic_id, self.partition)

    @property
    def prefix(self) -> str:
        return keys.partition_prefix(self.topic, self.topic_id, self.partition)

    def covers(self, last_offset: int) -> bool:
        """True when a stored manifest archives every offset up to ``last_offset``."""
        return self.manifest.last_uploaded_offset >= last_offset

    def note_error(self, message: str) -> None:
        self.errors += 1
        if message != self.last_error:
            log.warning("%s-%d: %s", self.topic, self.partition, message)
        self.last_error = message

    def clear_error(self) -> None:
        if self.last_error is not None:
            log.info("%s-%d: tiering recovered", self.topic, self.partition)
        self.last_error = None

    def note(self, message: str) -> None:
        """Record (and log, once) an event worth reporting that is not a failure."""
        if message != self.notice:
            log.warning("%s-%d: %s", self.topic, self.partition, message)
        self.notice = message


def manifest_dir(data_dir: Path) -> Path:
    """Where a broker keeps its manifest copies (``streamd restore`` writes them there too)."""
    return Path(data_dir) / "tiering" / "manifests"


class ManifestCopies:
    """Local copies of stored manifests: ``<dir>/<topic>/<topic_id>/<partition>.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, topic: str, topic_id: str, partition: int) -> Path:
        keys.validate_topic(topic)
        return self.directory / topic / keys.topic_id_text(topic_id) / f"{partition}.json"

    def save(self, manifest: PartitionManifest) -> None:
        path = self._path(manifest.topic, manifest.topic_id, manifest.partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, dump_partition_manifest(manifest))

    def load(self, topic: str, topic_id: str, partition: int) -> PartitionManifest | None:
        path = self._path(topic, topic_id, partition)
        try:
            manifest = load_partition_manifest(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ManifestError) as exc:
            log.warning("ignoring local manifest copy %s: %s", path, exc)
            return None
        if (manifest.topic, manifest.topic_id, manifest.partition) != (topic, topic_id, partition):
            return None
        return manifest

    def drop_topic(self, topic: str) -> None:
        import shutil

        keys.validate_topic(topic)
        shutil.rmtree(self.directory / topic, ignore_errors=True)
