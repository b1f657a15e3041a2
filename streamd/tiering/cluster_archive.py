"""The cluster metadata archive: what restore needs besides the partition manifests.

Two documents, keyed in :mod:`streamd.tiering.keys` and sealed like the manifests (canonical
JSON, CRC32C ``checksum`` verified on read, strict ``format_version``; invariant 6)::

    cluster/metadata.json  {"format_version": 1, "kind": "cluster-metadata", "cluster_id": "...",
                            "archived_at_ms": ..., "topics": [{"name", "topic_id",
                            "partitions", "overrides"}], "acls": {...}, "credentials": {...},
                            "transforms": [{deployment, code included}]}
    cluster/offsets.json   {"format_version": 1, "kind": "cluster-offsets", "cluster_id": "...",
                            "archived_at_ms": ..., "groups": {group: [{"topic", "partition",
                            "offset", "leader_epoch", "metadata", "commit_ts"}]},
                            "partitions": {topic: {"tiered": bool, "ends": [end offset, ...]}}}

``partitions`` records every partition's end offset (high watermark) when the document was
written: ``streamd restore`` compares it with what the bucket holds and reports the offsets that
were never archived (documents written before it existed have no ``partitions``).

``acls`` and ``credentials`` are the security stores' own documents, as stored (SCRAM salt,
iterations, StoredKey and ServerKey only: never a password). Tiering does not import the group
or security layers: the broker passes *providers*, callables returning these plain dicts.

Decisions:

- **Freshness.** :meth:`ClusterArchive.tick` runs at the end of every tiering tick
  (``tiering.upload_interval_ms``). The metadata document is rebuilt from the providers and
  stored when its content differs from what was last stored: the content itself is the dirty
  flag, so no admin path (CreateTopics, AlterConfigs, CreateAcls, user changes...) needs a hook.
  Offsets change with every commit, so they are compared and stored at most every
  ``tiering.offsets_archive_interval_ms``; a graceful shutdown stores both once more.
- **One cluster per prefix.** Before its first write the archive reads the stored metadata; if
  it belongs to another ``cluster_id`` (a fresh broker pointed at a bucket it was not restored
  from, or two clusters sharing a prefix), nothing is written and the reason is reported, so the
  archive restore depends on is never replaced by an empty cluster. ``streamd restore`` brings
  the cluster id back, so a restored broker continues the same archive.
- Failures are recorded (admin API ``/v1/cluster/archive``) and retried on the next tick;
  nothing raises into the tiering tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from streamd.log.manager import LogManager
from streamd.tiering import keys
from streamd.tiering.manifest import ManifestError, open_document, seal_document
from streamd.tiering.store import ObjectNotFound, ObjectStore, StoreError

log = logging.getLogger("streamd.tiering")

FORMAT_VERSION = 1
METADATA_KIND = "cluster-metadata"
OFFSETS_KIND = "cluster-offsets"

Provider = Callable[[], Any]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---- documents -----------------------------------------------------------------------------------


def seal(kind: str, body: Mapping[str, Any]) -> bytes:
    """The stored form of a cluster document: ``body`` plus version, kind and checksum."""
    return seal_document(dict(body, format_version=FORMAT_VERSION, kind=kind))


def unseal(data: bytes, kind: str) -> dict[str, Any]:
    """Parse and verify a cluster document (version, checksum, kind)."""
    return open_document(data, kind, f"{kind} document")


def end_offsets(logs: LogManager) -> dict[str, dict[str, Any]]:
    """Every local topic's partition end offsets, and whether it is tiered. Read replicas are
    left out: their offsets live in the origin's archive, not in this broker's, so a restore
    of this archive has none of them to miss."""
    return {
        topic.name: {
            "tiered": bool(topic.config.remote_storage_enable),
            "ends": [plog.high_watermark for plog in topic.partitions],
        }
        for topic in sorted(logs.topics().values(), key=lambda t: t.name)
        if not topic.config.remote_readreplica
    }


def topic_entries(logs: LogManager) -> list[dict[str, Any]]:
    """Every local topic as the metadata document lists it (sorted by name)."""
    return [
        {
            "name": topic.name,
            "topic_id": str(topic.topic_id),
            "partitions": len(topic.partitions),
            "overrides": dict(sorted(topic.overrides.items())),
        }
        for topic in sorted(logs.topics().values(), key=lambda t: t.name)
    ]


# ---- the archiver --------------------------------------------------------------------------------


@dataclass
class DocState:
    """What was last stored for one document, and how the last attempt went."""

    key: str
    kind: str
    stored_body: dict[str, Any] | None = None
    stored_at_ms: int = -1
    attempted_at_ms: int = -1
    last_error: str | None = None
    writes: int = 0


class ClusterArchive:
    def __init__(
        self,
        store: ObjectStore,
        *,
        cluster_id: str,
        topics: Provider,
        acls: Provider,
        credentials: Provider,
        offsets: Provider,
        ends: Provider | None = None,
        offsets_interval_ms: int = 10_000,
        transforms: Provider | None = None,
    ) -> None:
        self.store = store
        self.cluster_id = cluster_id
        self._providers = {"topics": topics, "acls": acls, "credentials": credentials}
        if transforms is not None:
            self._providers["transforms"] = transforms
        self._offsets = offsets
        self._ends = ends
        self.offsets_interval_ms = offsets_interval_ms
        self.metadata = DocState(keys.CLUSTER_METADATA_KEY, METADATA_KIND)
        self.offsets = DocState(keys.CLUSTER_OFFSETS_KEY, OFFSETS_KIND)
        self.blocked: str | None = None
        self._checked = False

    def metadata_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"cluster_id": self.cluster_id}
        body.update({name: provider() for name, provider in self._providers.items()})
        return body

    def offsets_body(self) -> dict[str, Any]:
        groups = self._offsets()
        body: dict[str, Any] = {
            "cluster_id": self.cluster_id,
            "groups": {
                g: sorted(entries, key=lambda e: (e["topic"], e["partition"]))
                for g, entries in sorted(groups.items())
            },
        }
        if self._ends is not None:
            body["partitions"] = self._ends()
        return body

    async def tick(self, *, force_offsets: bool = False) -> None:
        """Store whatever changed since the last store; never raises (errors are recorded)."""
        try:
            if not await self._may_write():
                return
            await self._sync(self.metadata, self.metadata_body())
            due = now_ms() - self.offsets.attempted_at_ms >= self.offsets_interval_ms
            if force_offsets or due or self.offsets.stored_body is None:
                self.offsets.attempted_at_ms = now_ms()
                await self._sync(self.offsets, self.offsets_body())
        except Exception as exc:  # a provider bug must not stop tiering
            log.exception("cluster metadata archive failed; retrying on the next tick")
            self.metadata.last_error = f"{type(exc).__name__}: {exc}"

    async def flush(self) -> None:
        """Store both documents now if they changed (graceful shutdown)."""
        await self.tick(force_offsets=True)

    async def _may_write(self) -> bool:
        if self.blocked is not None:
            return False
        if self._checked:
            return True
        try:
            data = await self.store.get(self.metadata.key)
            stored = unseal(data, METADATA_KIND)
        except ObjectNotFound:
            self._checked = True
            return True
        except (StoreError, ManifestError) as exc:
            self._note(self.metadata, f"cannot read the stored cluster metadata: {exc}")
            return False
        other = stored.get("cluster_id")
        if other != self.cluster_id:
            self.blocked = (
                f"{self.store.description} holds the archive of cluster {other!r}, this broker "
                f"is cluster {self.cluster_id!r}: cluster metadata is not archived (restore "
                "from that archive first, or use another tiering.store prefix)"
            )
            log.error("%s", self.blocked)
            return False
        self._checked = True
        return True

    async def _sync(self, state: DocState, body: dict[str, Any]) -> None:
        if body == state.stored_body:
            return
        stamp = now_ms()
        try:
            await self.store.put(state.key, seal(state.kind, dict(body, archived_at_ms=stamp)))
        except StoreError as exc:
            self._note(state, f"{state.key} not stored (will retry): {exc}")
            return
        if state.last_error is not None:
            log.info("%s stored again", state.key)
        state.stored_body, state.stored_at_ms, state.last_error = body, stamp, None
        state.writes += 1

    def _note(self, state: DocState, message: str) -> None:
        if message != state.last_error:
            log.warning("%s", message)
        state.last_error = message

    def health(self) -> dict[str, Any]:
        """The ``cluster_archive`` component of ``/v1/health``: degraded while the documents
        restore needs cannot be stored (or this broker may not write them)."""
        errors = [e for e in (self.blocked, self.metadata.last_error, self.offsets.last_error) if e]
        return {
            "status": "degraded" if errors else "ok",
            "metadata_stored_at_ms": self.metadata.stored_at_ms,
            "offsets_stored_at_ms": self.offsets.stored_at_ms,
            "errors": errors,
        }

    def status(self) -> dict[str, Any]:
        """``GET /v1/cluster/archive``: whether the stored documents match the broker now."""

        def doc(state: DocState, current: dict[str, Any]) -> dict[str, Any]:
            return {
                "key": state.key,
                "stored_at_ms": state.stored_at_ms,
                "pending": current != state.stored_body,
                "writes": state.writes,
                "last_error": state.last_error,
            }

        offsets = self.offsets_body()
        return {
            "store": self.store.description,
            "cluster_id": self.cluster_id,
            "blocked": self.blocked,
            "metadata": doc(self.metadata, self.metadata_body()),
            "offsets": doc(self.offsets, offsets)
            | {"groups": len(offsets["groups"]),
               "offsets": sum(len(v) for v in offsets["groups"].values())},
        }
