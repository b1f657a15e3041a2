"""Partition and topic manifests: what is archived, and the pure functions that change it.

A partition manifest lists every archived object of one partition, in offset order, with no
gaps: each starts right after the previous one ends. One entry ("segment") is one object: a local
segment, or several adjacent ones merged on upload. Its JSON form (``format_version`` 2)::

    {"format_version": 2, "kind": "partition", "topic": "t", "topic_id": "...", "partition": 0,
     "incarnation": "3f09a1c2", "remote_start_offset": 0, "last_uploaded_offset": 99,
     "segments": [{"base_offset": 0, "last_offset": 99, "size_bytes": 4096,
                   "first_timestamp": ..., "max_timestamp": ..., "record_count": 100,
                   "checksum": "1a2b3c4d", "key": "...log", "index_key": "...index",
                   "index_checksum": "...", "uploaded_at_ms": ...}],
     "checksum": "<crc32c hex of the canonical body>"}

``incarnation`` names the history new uploads belong to (it is part of their object keys, see
:mod:`streamd.tiering.keys`); entries keep whatever keys they were written under. Version 1
manifests (no incarnation) are read; a partition continuing one gets a fresh incarnation, and the
next manifest it stores is version 2.

``checksum`` is the CRC32C of the canonical JSON (sorted keys, no whitespace) of every other
field; it is verified on read (invariant 6). A manifest with another ``format_version`` is
refused with :class:`UnsupportedManifestVersion` rather than guessed at; unknown or missing
fields are errors too.

The manifest changes only through :func:`add_segment` and :func:`advance_remote_start`, which
return new frozen values; the uploader writes the result only after the objects it names exist
(invariant 3), and total retention writes the advanced manifest before deleting the objects it
returns as removed (invariant 5).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from streamd.errors import RemoteStorageError, StreamdError
from streamd.tiering import keys
from streamd.tiering.checksum import crc32c_hex, is_checksum

FORMAT_VERSION = 2
"""Partition manifests are written in this version; versions 1 and 2 are read."""
PARTITION_VERSIONS = (1, 2)
DOCUMENT_VERSION = 1
"""Topic manifests (and the cluster documents sharing :func:`seal_document`) are version 1."""


class ManifestError(RemoteStorageError):
    """A stored manifest is malformed, corrupt or of an unknown format."""


class UnsupportedManifestVersion(ManifestError):
    """The manifest was written in a format this streamd cannot read."""


class ManifestConflict(StreamdError):
    """A change would break the manifest's invariants (overlap, gap, conflicting re-upload)."""


@dataclass(frozen=True, kw_only=True)
class SegmentMeta:
    """One archived segment. Covers offsets ``base_offset..last_offset`` inclusive."""

    base_offset: int
    last_offset: int
    size_bytes: int
    first_timestamp: int
    max_timestamp: int
    record_count: int
    checksum: str
    key: str
    index_key: str
    index_checksum: str
    uploaded_at_ms: int
    txn_index_key: str = ""
    """The object holding the segment's aborted-transaction index (read_committed replay);
    set only for segments with an ABORT marker, and then stored in the manifest."""
    txn_index_checksum: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.base_offset <= self.last_offset:
            raise ValueError(f"segment offsets {self.base_offset}-{self.last_offset} are invalid")
        if self.size_bytes < 0 or self.record_count < 0:
            raise ValueError("segment size_bytes and record_count must be >= 0")
        if not is_checksum(self.checksum) or not is_checksum(self.index_checksum):
            raise ValueError("segment checksums must be 8 lower-case hex digits (crc32c)")
        if not self.key or not self.index_key:
            raise ValueError("segment key and index_key must be set")
        if bool(self.txn_index_key) != is_checksum(self.txn_index_checksum):
            raise ValueError("txn_index_key needs an 8 hex digit txn_index_checksum")

    def same_upload(self, other: SegmentMeta) -> bool:
        """True when ``other`` describes the same objects (the upload time may differ)."""
        return replace(self, uploaded_at_ms=0) == replace(other, uploaded_at_ms=0)


@dataclass(frozen=True, kw_only=True)
class PartitionManifest:
    """Archived state of one partition.

    Invariants (checked on construction):
    - segments are contiguous: ``segments[i+1].base_offset == segments[i].last_offset + 1``;
    - ``last_uploaded_offset`` is the last offset of the last segment (``-1``: nothing yet);
    - ``remote_start_offset`` (earliest offset a client may fetch from the bucket) lies inside the
      first segment; with no segments it is at least ``last_uploaded_offset + 1`` (more when
      DeleteRecords removed offsets that were never archived: they are gone for good).
    """

    topic: str
    topic_id: str
    partition: int
    remote_start_offset: int = 0
    last_uploaded_offset: int = -1
    segments: tuple[SegmentMeta, ...] = ()
    incarnation: str = ""
    """The history new uploads belong to (``""`` only in a version 1 manifest just read)."""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        keys.validate_topic(self.topic)
        keys.topic_id_text(self.topic_id)
        keys.validate_incarnation(self.incarnation)
        check_version(self.format_version, "partition manifest", PARTITION_VERSIONS)
        if self.partition < 0:
            raise ValueError(f"invalid partition {self.partition}")
        object.__setattr__(self, "segments", tuple(self.segments))
        segs = self.segments
        for prev, nxt in zip(segs, segs[1:], strict=False):
            if nxt.base_offset != prev.last_offset + 1:
                raise ManifestConflict(
                    f"segments {prev.base_offset}-{prev.last_offset} and "
                    f"{nxt.base_offset}-{nxt.last_offset} are not contiguous"
                )
        if segs:
            if self.last_uploaded_offset != segs[-1].last_offset:
                raise ManifestConflict(
                    "last_uploaded_offset must be the last segment's last offset"
                )
            if not segs[0].base_offset <= self.remote_start_offset <= segs[0].last_offset:
                raise ManifestConflict("remote_start_offset must lie inside the first segment")
        elif self.remote_start_offset < self.last_uploaded_offset + 1:
            raise ManifestConflict("an empty manifest starts after its last uploaded offset")

    @property
    def next_offset(self) -> int:
        """The base offset the next uploaded segment must have (unless nothing was uploaded)."""
        return self.last_uploaded_offset + 1

    @property
    def size_bytes(self) -> int:
        return sum(s.size_bytes for s in self.segments)


@dataclass(frozen=True, kw_only=True)
class TopicManifest:
    """Topic-level facts restore needs: id, partition count, topic configs (Kafka names)."""

    topic: str
    topic_id: str
    partition_count: int
    configs: dict[str, str] = field(default_factory=dict)
    format_version: int = DOCUMENT_VERSION

    def __post_init__(self) -> None:
        keys.validate_topic(self.topic)
        keys.topic_id_text(self.topic_id)
        check_version(self.format_version, "topic manifest")
        if self.partition_count < 1:
            raise ValueError(f"invalid partition_count {self.partition_count}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.configs.items()):
            raise ValueError("topic configs must map strings to strings")
        object.__setattr__(self, "configs", dict(self.configs))


def empty_manifest(
    topic: str, topic_id: str, partition: int, *, remote_start_offset: int = 0
) -> PartitionManifest:
    """A new history: nothing archived, a fresh incarnation."""
    return PartitionManifest(
        topic=topic,
        topic_id=topic_id,
        partition=partition,
        remote_start_offset=remote_start_offset,
        incarnation=keys.new_incarnation(),
    )


def with_incarnation(manifest: PartitionManifest) -> PartitionManifest:
    """``manifest`` ready to be continued: a version 1 manifest gets an incarnation (and is
    stored as version 2 from then on)."""
    if manifest.incarnation and manifest.format_version == FORMAT_VERSION:
        return manifest
    return replace(
        manifest,
        incarnation=manifest.incarnation or keys.new_incarnation(),
        format_version=FORMAT_VERSION,
    )


def new_incarnation(manifest: PartitionManifest) -> PartitionManifest:
    """The same archive continued by a new history (restore): later uploads use keys the
    previous history never used. Derived from the manifest rather than drawn at random, so
    restoring the same archive twice yields the same data_dir."""
    seed = f"{manifest.incarnation}/{manifest.last_uploaded_offset}/{manifest.remote_start_offset}"
    derived = hashlib.sha256(f"restored:{seed}".encode()).hexdigest()[:8]
    return replace(manifest, incarnation=derived, format_version=FORMAT_VERSION)


def add_segment(manifest: PartitionManifest, meta: SegmentMeta) -> PartitionManifest:
    """Admit an uploaded segment.

    The segment must start at ``last_uploaded_offset + 1``; only the very first segment of a
    partition may start anywhere (a log whose start moved before tiering began), and it then sets
    ``remote_start_offset``. Re-adding a segment already listed with the same objects is a
    no-op (a retried admission); anything else overlapping raises :class:`ManifestConflict`.
    """
    if meta.last_offset <= manifest.last_uploaded_offset:
        existing = segment_for_offset(manifest, meta.base_offset)
        if existing is not None and existing.same_upload(meta):
            return manifest
        raise ManifestConflict(
            f"segment {meta.base_offset}-{meta.last_offset} overlaps offsets already archived "
            f"(up to {manifest.last_uploaded_offset}) of {manifest.topic}/{manifest.partition}"
        )
    first_ever = manifest.last_uploaded_offset == -1 and not manifest.segments
    # Offsets below the remote start of an empty manifest were deleted (DeleteRecords): a
    # segment may skip them, and whatever it holds below the start stays unreadable.
    after_deleted = not manifest.segments and meta.base_offset <= manifest.remote_start_offset
    if meta.base_offset != manifest.next_offset and not (first_ever or after_deleted):
        kind = "gap" if meta.base_offset > manifest.next_offset else "overlap"
        raise ManifestConflict(
            f"segment {meta.base_offset}-{meta.last_offset} leaves a {kind}: "
            f"{manifest.topic}/{manifest.partition} expects base offset {manifest.next_offset}"
        )
    if not manifest.segments and meta.last_offset < manifest.remote_start_offset:
        raise ManifestConflict(
            f"segment {meta.base_offset}-{meta.last_offset} lies wholly below the remote start "
            f"{manifest.remote_start_offset} of {manifest.topic}/{manifest.partition}"
        )
    if manifest.segments:
        start = manifest.remote_start_offset
    elif first_ever:
        start = meta.base_offset
    else:
        start = max(meta.base_offset, manifest.remote_start_offset)
    return replace(
        manifest,
        segments=(*manifest.segments, meta),
        last_uploaded_offset=meta.last_offset,
        remote_start_offset=start,
    )


def advance_remote_start(
    manifest: PartitionManifest, offset: int
) -> tuple[PartitionManifest, tuple[SegmentMeta, ...]]:
    """Move the remote start offset forward to ``offset`` (total retention).

    Returns the new manifest and the segments that now lie wholly below it; their objects may be
    deleted only after the new manifest is stored (invariant 5). Moving backwards is a no-op;
    moving past ``last_uploaded_offset + 1`` raises :class:`ManifestConflict`.
    """
    if offset <= manifest.remote_start_offset:
        return manifest, ()
    if offset > manifest.next_offset:
        raise ManifestConflict(
            f"cannot move remote start of {manifest.topic}/{manifest.partition} to {offset}: "
            f"only offsets up to {manifest.last_uploaded_offset} are archived"
        )
    removed = tuple(s for s in manifest.segments if s.last_offset < offset)
    kept = manifest.segments[len(removed) :]
    return replace(manifest, segments=kept, remote_start_offset=offset), removed


def delete_records_before(
    manifest: PartitionManifest, offset: int
) -> tuple[PartitionManifest, tuple[SegmentMeta, ...]]:
    """DeleteRecords: no offset below ``offset`` may be served from the bucket any more.

    Like :func:`advance_remote_start`, but ``offset`` may lie beyond what is archived (the
    records deleted were never uploaded): the manifest then keeps no segment and starts at
    ``offset``, and the next upload may begin anywhere up to it. Returns the new manifest and
    the segments now wholly below the start (delete their objects after storing it).
    """
    if offset <= manifest.remote_start_offset:
        return manifest, ()
    if offset <= manifest.next_offset and manifest.segments:
        return advance_remote_start(manifest, offset)
    return replace(manifest, segments=(), remote_start_offset=offset), manifest.segments


def segment_for_offset(manifest: PartitionManifest, offset: int) -> SegmentMeta | None:
    """The segment holding ``offset``, or ``None`` when it is not (or no longer) archived."""
    if offset < manifest.remote_start_offset or offset > manifest.last_uploaded_offset:
        return None
    segs = manifest.segments
    i = bisect.bisect_right(segs, offset, key=lambda s: s.base_offset) - 1
    if i < 0:
        return None
    seg = segs[i]
    return seg if seg.base_offset <= offset <= seg.last_offset else None


def dump_partition_manifest(manifest: PartitionManifest) -> bytes:
    body = {
        "format_version": manifest.format_version,
        "kind": "partition",
        "topic": manifest.topic,
        "topic_id": manifest.topic_id,
        "partition": manifest.partition,
        "remote_start_offset": manifest.remote_start_offset,
        "last_uploaded_offset": manifest.last_uploaded_offset,
        "segments": [_dump_segment(s) for s in manifest.segments],
    }
    if manifest.format_version >= 2:
        body["incarnation"] = manifest.incarnation
    return _seal(body)


OPTIONAL_SEGMENT_FIELDS = frozenset({"txn_index_key", "txn_index_checksum"})
"""Written only when set, so manifests of topics without aborted transactions are unchanged."""


def _dump_segment(seg: SegmentMeta) -> dict[str, Any]:
    raw = asdict(seg)
    if not seg.txn_index_key:
        for name in OPTIONAL_SEGMENT_FIELDS:
            del raw[name]
    return raw


def load_partition_manifest(data: bytes) -> PartitionManifest:
    body = open_document(data, "partition", "partition manifest", PARTITION_VERSIONS)
    names = {f.name for f in fields(PartitionManifest)}
    if body["format_version"] < 2:
        names.discard("incarnation")
    _expect_fields(body, names, "partition manifest")
    try:
        raw_segments = body.pop("segments")
        if not isinstance(raw_segments, list):
            raise TypeError("segments must be a list")
        segments = tuple(_load_segment(s) for s in raw_segments)
        _check_types(
            body,
            {
                "topic": str,
                "topic_id": str,
                "partition": int,
                "remote_start_offset": int,
                "last_uploaded_offset": int,
                **({"incarnation": str} if "incarnation" in body else {}),
            },
            "partition manifest",
        )
        return PartitionManifest(**body, segments=segments)
    except ManifestError:
        raise
    except (TypeError, ValueError, StreamdError) as exc:
        raise ManifestError(f"invalid partition manifest: {exc}") from exc


def dump_topic_manifest(manifest: TopicManifest) -> bytes:
    body = {
        "format_version": manifest.format_version,
        "kind": "topic",
        "topic": manifest.topic,
        "topic_id": manifest.topic_id,
        "partition_count": manifest.partition_count,
        "configs": dict(manifest.configs),
    }
    return _seal(body)


def load_topic_manifest(data: bytes) -> TopicManifest:
    body = _open(data, "topic")
    _expect_fields(body, {f.name for f in fields(TopicManifest)}, "topic manifest")
    try:
        _check_types(
            body,
            {"topic": str, "topic_id": str, "partition_count": int, "configs": dict},
            "topic manifest",
        )
        return TopicManifest(**body)
    except ManifestError:
        raise
    except (TypeError, ValueError, StreamdError) as exc:
        raise ManifestError(f"invalid topic manifest: {exc}") from exc


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def check_version(
    version: object, what: str, supported: tuple[int, ...] = (DOCUMENT_VERSION,)
) -> None:
    if isinstance(version, bool) or version not in supported:
        readable = " and ".join(str(v) for v in supported)
        raise UnsupportedManifestVersion(
            f"{what} format_version {version!r} is not supported "
            f"(this streamd reads version {readable})"
        )


def seal_document(body: Mapping[str, Any]) -> bytes:
    """The stored form of every JSON document streamd writes: sorted keys plus a CRC32C of the
    canonical body (invariant 6). Manifests and the cluster archive share it."""
    sealed = dict(body, checksum=crc32c_hex(_canonical(dict(body))))
    return json.dumps(sealed, sort_keys=True, indent=1).encode() + b"\n"


def open_document(
    data: bytes, kind: str, what: str, versions: tuple[int, ...] = (DOCUMENT_VERSION,)
) -> dict[str, Any]:
    """Parse a sealed document: version first (a future format may change everything else),
    then checksum, then ``kind``; returns the body without checksum and kind."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ManifestError(f"{what} is not a JSON object")
    check_version(body.get("format_version"), what, versions)
    expected = body.pop("checksum", None)
    if not is_checksum(expected):
        raise ManifestError(f"{what} has no valid checksum field")
    actual = crc32c_hex(_canonical(body))
    if actual != expected:
        raise ManifestError(f"{what} checksum mismatch: stored {expected}, computed {actual}")
    if body.pop("kind", None) != kind:
        raise ManifestError(f"document is not a {what}")
    return body


def _seal(body: dict[str, Any]) -> bytes:
    return seal_document(body)


def _open(data: bytes, kind: str) -> dict[str, Any]:
    return open_document(data, kind, f"{kind} manifest")


def _load_segment(raw: Any) -> SegmentMeta:
    if not isinstance(raw, dict):
        raise TypeError("segment entries must be objects")
    names = {f.name for f in fields(SegmentMeta)}
    if not OPTIONAL_SEGMENT_FIELDS & raw.keys():
        names -= OPTIONAL_SEGMENT_FIELDS
    _expect_fields(raw, names, "segment entry")
    _check_types(
        raw,
        {
            f.name: (str if f.type in ("str", str) else int)
            for f in fields(SegmentMeta)
            if f.name in names
        },
        "segment entry",
    )
    return SegmentMeta(**raw)


def _expect_fields(body: dict[str, Any], names: set[str], what: str) -> None:
    missing, unknown = names - body.keys(), body.keys() - names
    if missing or unknown:
        raise ManifestError(
            f"{what} fields do not match format {FORMAT_VERSION}: "
            f"missing {sorted(missing)}, unknown {sorted(unknown)}"
        )


def _check_types(body: dict[str, Any], types: dict[str, type], what: str) -> None:
    for name, typ in types.items():
        value = body[name]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ManifestError(f"{what} field {name!r} must be {typ.__name__}, got {value!r}")
