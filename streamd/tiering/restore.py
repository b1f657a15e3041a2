"""Restore, tiering side: read the archive into a plan, then rebuild topics and partitions.

**Reading** (:func:`read_plan`) touches metadata only: ``cluster/metadata.json``,
``cluster/offsets.json``, each topic's manifest, each partition's manifest and *one* listing of
each partition's prefix, compared against the segment and index objects the manifest names (a
HEAD per segment would be O(segments) requests). No segment is downloaded: the cost is
O(topics + partitions) requests with bounded concurrency, and O(segments) parsing.

**The plan** is built by pure functions (:func:`select_topics`, :func:`plan_partition`,
:func:`select_offsets`) so that every decision is unit-tested without a store:

- The cluster metadata document is the topic list (ids, partition counts, overrides, also of
  topics that never tiered). Without it (an archive written before it existed) the whole bucket
  is listed once for topic manifests; with neither there is no streamd data under the prefix.
- A restored partition's local log is empty and starts at ``last_uploaded_offset + 1`` (the
  next offset); its local manifest copy makes the tiering service serve every archived offset
  from ``remote_start_offset`` on before it has even reached the bucket, and lets the uploader
  continue exactly after the last archived segment. The copy carries a new incarnation: the
  restored broker's uploads get keys no earlier history used (and are conditional anyway), so
  no existing object is ever rewritten, even if the old broker still runs.
  A partition without a manifest and without archived objects (nothing archived yet) starts
  empty at 0.
- Transactions are not restored (neither coordinator state nor open transactions): a restored
  partition has no producer state, so its last stable offset is its end, and read_committed
  reads of it list exactly the aborted transactions of the archived transaction indexes. That
  is exact because the uploader never archives records of a transaction that is open, or
  aborted with its marker not archived, at upload time (:mod:`streamd.tiering.candidates`).
- A partition whose segment objects exist *without* a manifest (the manifest was lost) makes
  its topic unrestorable: starting it empty at 0 would hand the archived offsets out again and
  hide the archive. ``allow_missing_manifest`` (``--allow-missing-manifest``) restores it empty
  instead, starting after the highest offset any object under its prefix holds (the objects
  stay in the bucket, unserved), and reports it.
- The cluster archive's offsets document records every partition's end offset; a partition
  whose archive ends before that is reported with the number of offsets that were never
  archived (lost: the restore is incomplete, exit 3). The document is written every
  ``tiering.offsets_archive_interval_ms``, so offsets produced after its last write are not
  counted.
- A segment or index object named by a manifest but absent from the bucket (or of another
  size) is reported as a gap of offsets; the partition is restored anyway, so everything else
  is served (a Fetch inside the gap gets KAFKA_STORAGE_ERROR).
- A partition manifest that cannot be read (corrupt body, checksum mismatch of its object or
  its content) makes its topic unrestorable: restoring that partition empty at 0 would let new
  uploads overwrite archived objects. Every other topic is restored (exit 3). An unreadable
  cluster metadata document is reported and the topic manifests are used instead (ACLs and
  users are then not restored); an unreadable offsets document is reported and no group
  offsets are restored. A manifest or cluster document of an unknown ``format_version`` stops
  the whole restore (this streamd is too old for the bucket) before anything is written.
- Committed offsets are restored for restored topics only; an offset past a partition's
  restored end is kept (the consumer's reset policy applies, as in Kafka) and reported.

**Writing** (:func:`write_topics`) goes through the log layer (``create_topic`` with the
archived topic id, ``truncate_fully_and_start_at``) and :class:`ManifestCopies`. A topic that
already exists locally is replaced (``--force``), which with the deterministic layout makes a
second run produce the same data_dir. Groups, ACLs and users are written by the broker layer
(:mod:`streamd.broker.restore`), which may import those layers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from streamd.errors import RemoteStorageError, StreamdError
from streamd.log.manager import FsyncPolicy, LogManager
from streamd.tiering import keys
from streamd.tiering.cluster_archive import METADATA_KIND, OFFSETS_KIND, unseal
from streamd.tiering.manifest import (
    ManifestError,
    PartitionManifest,
    TopicManifest,
    UnsupportedManifestVersion,
    empty_manifest,
    load_partition_manifest,
    load_topic_manifest,
    new_incarnation,
)
from streamd.tiering.partition_state import ManifestCopies, manifest_dir
from streamd.tiering.store import ObjectNotFound, ObjectStore, StoreError

READ_CONCURRENCY = 32


class RestoreError(StreamdError):
    """Restore cannot proceed; the message is the one line the operator sees."""


class Progress(Protocol):
    def phase(self, description: str, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class NoProgress:
    def phase(self, description: str, total: int) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        return None


# ---- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Skipped:
    """Something that could not be restored (fully), and why."""

    what: str
    why: str


@dataclass(frozen=True, kw_only=True)
class PartitionPlan:
    topic: str
    partition: int
    manifest: PartitionManifest | None = None
    """None: nothing archived; the partition starts empty at offset 0."""
    bucket_bytes: int = 0
    gaps: tuple[Skipped, ...] = ()
    known_end: int | None = None
    """The partition's end offset when the cluster archive last recorded it (None: unknown)."""
    notes: tuple[str, ...] = ()

    @property
    def unarchived(self) -> int:
        """Offsets the cluster archive knew of that are not in the bucket (lost)."""
        if self.known_end is None:
            return 0
        return max(0, self.known_end - self.next_offset)

    @property
    def start_offset(self) -> int:
        """Earliest offset served after restore (the remote start)."""
        return self.manifest.remote_start_offset if self.manifest else 0

    @property
    def next_offset(self) -> int:
        """Where the empty local log starts: the next offset a producer gets (never below the
        remote start: offsets deleted by DeleteRecords are not handed out again)."""
        if self.manifest is None:
            return 0
        return max(self.manifest.next_offset, self.manifest.remote_start_offset)

    @property
    def segments(self) -> int:
        return len(self.manifest.segments) if self.manifest else 0


@dataclass(frozen=True, kw_only=True)
class TopicSource:
    """A topic as the archive describes it, before its partitions were read."""

    name: str
    topic_id: str
    partition_count: int
    overrides: dict[str, str]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TopicPlan:
    name: str
    topic_id: str
    overrides: dict[str, str]
    partitions: tuple[PartitionPlan, ...]
    notes: tuple[str, ...] = ()

    @property
    def bucket_bytes(self) -> int:
        return sum(p.bucket_bytes for p in self.partitions)

    @property
    def segments(self) -> int:
        return sum(p.segments for p in self.partitions)


@dataclass(frozen=True, kw_only=True)
class RestorePlan:
    store: str
    cluster_id: str | None = None
    metadata_archived_at_ms: int | None = None
    offsets_archived_at_ms: int | None = None
    topics: tuple[TopicPlan, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    acls: dict[str, Any] | None = None
    """The AclStore document, or None when ACLs are not restored (``--topic``, not archived)."""
    credentials: dict[str, Any] | None = None
    transforms: list[dict[str, Any]] | None = None
    """Archived transform deployments (full restores only, like ACLs)."""
    offsets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """group -> committed offsets of restored topics (cluster/offsets.json entries)."""

    @property
    def gaps(self) -> tuple[Skipped, ...]:
        return tuple(g for t in self.topics for p in t.partitions for g in p.gaps)


def select_topics(
    metadata: Mapping[str, Any] | None,
    discovered: Mapping[str, TopicManifest],
    wanted: Iterable[str] | None = None,
) -> list[TopicSource]:
    """The topics to restore: from the cluster metadata document, else from the topic
    manifests found in the bucket; only ``wanted`` ones if given (an unknown name is an error).
    """
    sources: dict[str, TopicSource] = {}
    if metadata is not None:
        for entry in metadata.get("topics", []):
            sources[entry["name"]] = TopicSource(
                name=entry["name"],
                topic_id=str(entry["topic_id"]),
                partition_count=int(entry["partitions"]),
                overrides={str(k): str(v) for k, v in entry["overrides"].items()},
            )
    else:
        for name, tm in discovered.items():
            sources[name] = TopicSource(
                name=name,
                topic_id=tm.topic_id,
                partition_count=tm.partition_count,
                overrides=dict(tm.configs),
                notes=("no cluster metadata archived: topic taken from its topic manifest",),
            )
    if wanted is not None:
        wanted = list(dict.fromkeys(wanted))
        unknown = [w for w in wanted if w not in sources]
        if unknown:
            have = ", ".join(sorted(sources)) or "none"
            raise RestoreError(
                f"topic {', '.join(map(repr, unknown))} is not in the archive (archived topics: "
                f"{have})"
            )
        return [sources[w] for w in wanted]
    return [sources[name] for name in sorted(sources)]


def merge_topic_manifest(source: TopicSource, manifest: TopicManifest | None) -> TopicSource:
    """The cluster metadata wins (it lists every change within one upload interval); a topic
    manifest that knows more partitions (an add-partitions newer than the metadata) adds them."""
    if manifest is None or manifest.topic_id != source.topic_id:
        return source
    if manifest.partition_count > source.partition_count:
        note = (
            f"topic manifest has {manifest.partition_count} partitions, cluster metadata "
            f"{source.partition_count}: using {manifest.partition_count}"
        )
        return TopicSource(
            name=source.name,
            topic_id=source.topic_id,
            partition_count=manifest.partition_count,
            overrides=source.overrides,
            notes=(*source.notes, note),
        )
    return source


def plan_partition(
    topic: str,
    partition: int,
    manifest: PartitionManifest | None,
    listing: Mapping[str, int],
    *,
    known_end: int | None = None,
) -> PartitionPlan:
    """Compare the manifest with one listing of the partition's prefix (key -> size) and with
    the end offset the cluster archive recorded."""
    gaps = []
    where = f"{topic}-{partition}"
    for seg in manifest.segments if manifest else ():
        offsets = f"offsets {seg.base_offset}-{seg.last_offset}"
        size = listing.get(seg.key)
        if size is None:
            why = f"segment object {seg.key} is missing from the bucket"
        elif size != seg.size_bytes:
            why = f"segment object {seg.key} is {size} bytes, the manifest says {seg.size_bytes}"
        elif seg.index_key not in listing:
            why = f"index object {seg.index_key} is missing from the bucket"
        elif seg.txn_index_key and seg.txn_index_key not in listing:
            why = f"transaction index object {seg.txn_index_key} is missing from the bucket"
        else:
            continue
        gaps.append(Skipped(what=f"{where} {offsets}", why=f"{why}; these offsets cannot be read"))
    plan = PartitionPlan(
        topic=topic,
        partition=partition,
        manifest=manifest,
        bucket_bytes=sum(listing.values()),
        gaps=tuple(gaps),
        known_end=known_end,
    )
    if plan.unarchived:
        lost = Skipped(
            what=f"{where} offsets {plan.next_offset}-{known_end - 1 if known_end else 0}",
            why=f"{plan.unarchived} offset(s) the cluster archive recorded were never archived "
            "(the broker stopped before uploading its tail); they are lost",
        )
        plan = dataclasses.replace(plan, gaps=(*plan.gaps, lost))
    return plan


def unmanifested_end(listing: Mapping[str, int]) -> int | None:
    """The next offset after every segment object in a partition listing (None: there is no
    segment object)."""
    spans = [keys.parse_segment_name(k) for k in listing]
    lasts = [span[1] for span in spans if span is not None]
    return max(lasts) + 1 if lasts else None


def plan_without_manifest(
    topic: str,
    topic_id: str,
    partition: int,
    listing: Mapping[str, int],
    *,
    allow: bool,
    known_end: int | None = None,
) -> PartitionPlan | Skipped:
    """A partition without a manifest: empty at 0 when nothing was archived; when segment
    objects exist, unrestorable (a :class:`Skipped`) unless ``allow``, which starts it empty
    after the highest archived offset (those objects stay, unserved)."""
    end = unmanifested_end(listing)
    if end is None:
        return plan_partition(topic, partition, None, listing, known_end=known_end)
    count = sum(1 for k in listing if keys.parse_segment_name(k) is not None)
    where = f"{topic}-{partition}"
    if not allow:
        return Skipped(
            what=f"topic {topic}",
            why=f"partition {partition} has {count} archived segment object(s) (offsets up to "
            f"{end - 1}) but no manifest: restoring it empty at offset 0 would hand those "
            "offsets out again; use --allow-missing-manifest to restore it empty from offset "
            f"{end} (the archived records are not served)",
        )
    start = max(end, known_end or 0)
    manifest = empty_manifest(topic, topic_id, partition, remote_start_offset=start)
    plan = plan_partition(topic, partition, manifest, listing, known_end=known_end)
    lost = Skipped(
        what=f"{where} offsets 0-{start - 1}",
        why=f"no manifest: {count} archived segment object(s) are not served "
        f"(--allow-missing-manifest); the partition restarts empty at offset {start}",
    )
    return dataclasses.replace(plan, gaps=(*plan.gaps, lost))


def select_offsets(
    offsets_doc: Mapping[str, Any] | None, topics: Iterable[TopicPlan]
) -> tuple[dict[str, list[dict[str, Any]]], list[Skipped]]:
    """Committed offsets of the restored topics; notes offsets past a partition's restored end
    (their records were never archived) and offsets of partitions that are not restored."""
    ends = {(t.name, p.partition): p.next_offset for t in topics for p in t.partitions}
    names = {t for t, _ in ends}
    out: dict[str, list[dict[str, Any]]] = {}
    notes: list[Skipped] = []
    for group, entries in sorted(((offsets_doc or {}).get("groups") or {}).items()):
        for entry in entries:
            tp = (entry["topic"], int(entry["partition"]))
            if entry["topic"] not in names:
                continue
            if tp not in ends:
                notes.append(
                    Skipped(
                        what=f"group {group} offset of {tp[0]}-{tp[1]}",
                        why="the topic has no such partition in the archive",
                    )
                )
                continue
            out.setdefault(group, []).append(dict(entry))
            if int(entry["offset"]) > ends[tp]:
                notes.append(
                    Skipped(
                        what=f"group {group} at {tp[0]}-{tp[1]} offset {entry['offset']}",
                        why=f"past the restored end {ends[tp]}: records "
                        f"{ends[tp]}-{int(entry['offset']) - 1} were never archived "
                        "(the consumer's auto.offset.reset applies)",
                    )
                )
    return out, notes


# ---- reading the archive -------------------------------------------------------------------------


def recorded_ends(offsets_doc: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``topic -> {"tiered": bool, "ends": [end offset per partition]}`` from the offsets
    document (empty for documents written before it recorded them)."""
    raw = (offsets_doc or {}).get("partitions") or {}
    out: dict[str, dict[str, Any]] = {}
    for topic, entry in raw.items():
        try:
            out[str(topic)] = {
                "tiered": bool(entry["tiered"]),
                "ends": [int(e) for e in entry["ends"]],
            }
        except (KeyError, TypeError, ValueError):
            continue
    return out


async def read_plan(
    store: ObjectStore,
    wanted: Iterable[str] | None = None,
    progress: Progress | None = None,
    *,
    allow_missing_manifest: bool = False,
) -> RestorePlan:
    """Read cluster documents and manifests into a :class:`RestorePlan` (nothing is written)."""
    progress = progress or NoProgress()
    progress.phase("reading cluster metadata", 2)
    try:
        await store.check()
    except StoreError as exc:
        raise RestoreError(f"bucket unreachable: {exc}") from None
    skipped: list[Skipped] = []
    metadata = await _get_document(store, keys.CLUSTER_METADATA_KEY, METADATA_KIND, skipped)
    progress.advance()
    offsets = await _get_document(store, keys.CLUSTER_OFFSETS_KEY, OFFSETS_KIND, skipped)
    progress.advance()
    discovered: dict[str, TopicManifest] = {}
    if metadata is None:
        discovered = await _discover_topic_manifests(store)
        if not discovered:
            raise RestoreError(
                f"no streamd data under {store.description}: neither {keys.CLUSTER_METADATA_KEY} "
                "nor any topic manifest"
            )
    sources = select_topics(metadata, discovered, None if wanted is None else list(wanted))
    ends = recorded_ends(offsets)

    sem = asyncio.Semaphore(READ_CONCURRENCY)
    progress.phase("reading manifests", sum(s.partition_count for s in sources) + len(sources))

    async def read_topic(source: TopicSource) -> TopicPlan | None:
        async with sem:
            tm = discovered.get(source.name)
            if tm is None:
                key = keys.topic_manifest_key(source.name, source.topic_id)
                tm = await _get_manifest(store, key, load_topic_manifest, skipped, source.name)
        progress.advance()
        source = merge_topic_manifest(source, tm)
        parts = await asyncio.gather(
            *(read_partition(source, i) for i in range(source.partition_count))
        )
        if any(p is None for p in parts):
            return None
        return TopicPlan(
            name=source.name,
            topic_id=source.topic_id,
            overrides=source.overrides,
            partitions=tuple(p for p in parts if p is not None),
            notes=source.notes,
        )

    async def read_partition(source: TopicSource, index: int) -> PartitionPlan | None:
        prefix = keys.partition_prefix(source.name, source.topic_id, index)
        what = f"{source.name}-{index}"
        recorded = ends.get(source.name)
        known_end = None
        tiered = True
        if recorded is not None and index < len(recorded["ends"]):
            known_end, tiered = recorded["ends"][index], recorded["tiered"]
        async with sem:
            try:
                listing = {info.key: info.size async for info in store.list(prefix)}
            except StoreError as exc:
                raise RestoreError(f"bucket unreachable: listing {prefix}: {exc}") from None
            manifest = None
            if prefix + keys.PARTITION_MANIFEST_NAME in listing:
                manifest = await _get_manifest(
                    store, prefix + keys.PARTITION_MANIFEST_NAME, load_partition_manifest,
                    skipped, what,
                )
                if manifest is None:
                    skipped.append(
                        Skipped(what=f"topic {source.name}",
                                why=f"partition {index} has an unreadable manifest (above)")
                    )
        progress.advance()
        if manifest is not None and (manifest.topic, manifest.topic_id, manifest.partition) != (
            source.name, source.topic_id, index
        ):
            skipped.append(Skipped(what=what, why="its manifest names another partition"))
            return None
        if prefix + keys.PARTITION_MANIFEST_NAME in listing and manifest is None:
            return None
        if manifest is None:
            planned = plan_without_manifest(
                source.name, source.topic_id, index, listing,
                allow=allow_missing_manifest, known_end=known_end if tiered else None,
            )
            if isinstance(planned, Skipped):
                skipped.append(planned)
                return None
            plan = planned
        else:
            plan = plan_partition(
                source.name, index, manifest, listing, known_end=known_end if tiered else None
            )
        if not tiered and known_end:
            plan = dataclasses.replace(
                plan,
                notes=(f"not tiered: its {known_end} offset(s) were on local disk only",),
            )
        return plan

    plans = await asyncio.gather(*(read_topic(s) for s in sources))
    topics = tuple(p for p in plans if p is not None)
    group_offsets, offset_notes = select_offsets(offsets, topics)
    full = wanted is None
    return RestorePlan(
        store=store.description,
        cluster_id=(metadata or offsets or {}).get("cluster_id"),
        metadata_archived_at_ms=(metadata or {}).get("archived_at_ms"),
        offsets_archived_at_ms=(offsets or {}).get("archived_at_ms"),
        topics=topics,
        skipped=(*skipped, *offset_notes),
        acls=metadata.get("acls") if metadata is not None and full else None,
        credentials=metadata.get("credentials") if metadata is not None and full else None,
        transforms=metadata.get("transforms") if metadata is not None and full else None,
        offsets=group_offsets,
    )


async def _get_document(
    store: ObjectStore, key: str, kind: str, skipped: list[Skipped]
) -> dict[str, Any] | None:
    """A cluster document, or None when it is missing or unreadable (then noted in
    ``skipped``: restore goes on without it)."""
    try:
        return unseal(await store.get(key), kind)
    except ObjectNotFound:
        return None
    except UnsupportedManifestVersion as exc:
        raise RestoreError(f"{key}: {exc}; upgrade streamd to restore this archive") from None
    except StoreError as exc:
        if exc.retriable:
            raise RestoreError(f"bucket unreachable: reading {key}: {exc}") from None
        skipped.append(Skipped(what=key, why=f"unreadable: {exc}"))
        return None
    except (ManifestError, RemoteStorageError) as exc:
        consequence = (
            "topics are taken from the topic manifests; ACLs and users are not restored"
            if kind == METADATA_KIND
            else "no committed group offsets are restored"
        )
        skipped.append(Skipped(what=key, why=f"unreadable ({exc}): {consequence}"))
        return None


async def _get_manifest(
    store: ObjectStore, key: str, load: Any, skipped: list[Skipped], what: str
) -> Any:
    """A manifest, or None when missing or corrupt (then noted in ``skipped``)."""
    try:
        return load(await store.get(key))
    except ObjectNotFound:
        return None
    except UnsupportedManifestVersion as exc:
        raise RestoreError(f"{key}: {exc}; upgrade streamd to restore this archive") from None
    except (ManifestError, RemoteStorageError) as exc:
        if isinstance(exc, StoreError) and exc.retriable:
            raise RestoreError(f"bucket unreachable: reading {key}: {exc}") from None
        skipped.append(Skipped(what=what, why=f"manifest {key} is unreadable: {exc}"))
        return None


async def _discover_topic_manifests(store: ObjectStore) -> dict[str, TopicManifest]:
    found: dict[str, TopicManifest] = {}
    try:
        names = [
            info.key
            async for info in store.list("")
            if info.key.endswith("/" + keys.TOPIC_MANIFEST_NAME)
        ]
        for key in names:
            try:
                tm = load_topic_manifest(await store.get(key))
            except UnsupportedManifestVersion as exc:
                raise RestoreError(f"{key}: {exc}; upgrade streamd to restore it") from None
            except ManifestError:
                continue
            if key == keys.topic_manifest_key(tm.topic, tm.topic_id):
                found[tm.topic] = tm
    except StoreError as exc:
        raise RestoreError(f"bucket unreachable: {exc}") from None
    return found


# ---- writing -------------------------------------------------------------------------------------


async def write_topics(
    plan: RestorePlan,
    data_dir: Path,
    defaults: Mapping[str, str],
    progress: Progress | None = None,
) -> list[Skipped]:
    """Create every planned topic (replacing a local one of the same name) with its archived
    id and overrides, each partition an empty log at its next offset plus its manifest copy.
    Returns the topics that could not be created, and why."""
    progress = progress or NoProgress()
    progress.phase("writing partitions", sum(len(t.partitions) for t in plan.topics))
    failures: list[Skipped] = []
    logs = LogManager(data_dir, defaults=dict(defaults), fsync=FsyncPolicy("always"))
    copies = ManifestCopies(manifest_dir(data_dir))
    await asyncio.to_thread(logs.load)
    try:
        for tp in plan.topics:
            if logs.get(tp.name) is not None:
                await logs.delete_topic(tp.name)
            copies.drop_topic(tp.name)
            try:
                topic_id = uuid.UUID(tp.topic_id)
                topic = logs.create_topic(
                    tp.name, len(tp.partitions), tp.overrides, topic_id=topic_id
                )
            except (ValueError, StreamdError) as exc:
                failures.append(Skipped(what=f"topic {tp.name}", why=f"not created: {exc}"))
                progress.advance(len(tp.partitions))
                continue
            for part, plog in zip(tp.partitions, topic.partitions, strict=True):
                if part.manifest is not None:
                    copies.save(new_incarnation(part.manifest))
                if part.next_offset > plog.log_end_offset:
                    plog.truncate_fully_and_start_at(part.next_offset)
                progress.advance()
    finally:
        await logs.close()
    return failures
