"""``streamd archive verify``: an offline scrub of a bucket (no broker needed).

One listing of the whole store, then every manifest is read with the tiering layer's own
readers (:func:`~streamd.tiering.manifest.load_partition_manifest`,
:func:`~streamd.tiering.manifest.load_topic_manifest`, the cluster documents'
:func:`~streamd.tiering.cluster_archive.unseal`), so a change of the manifest format reaches the
scrub without a change here. For every segment a manifest names:

- the segment object exists and has the manifest's ``size_bytes``;
- its bytes hash to the manifest's CRC32C ``checksum`` (read in ranged chunks: memory stays
  bounded whatever the segment size);
- its index object exists and matches ``index_checksum`` (and the CRC32C stamped on the object
  when it was stored, which a whole-object ``get`` verifies).

Objects no manifest names are *orphans*: left by an upload that crashed between the segment and
its manifest (harmless by invariant 3), or awaiting deletion after retention. They are listed
but are not failures unless ``strict``; objects under the prefix of a partition whose manifest
cannot be read are "unverifiable", not orphans. A manifest that cannot be read is a failure.

The scrub reads through the same :class:`~streamd.tiering.store.ObjectStore` the broker uses
(``file://`` and ``s3://``, the broker's S3 settings and retries), never writes, and reports
progress through the restore's ``Progress`` protocol (bytes verified).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streamd.config import BrokerConfig
from streamd.errors import RemoteStorageError, StreamdError
from streamd.tiering import keys
from streamd.tiering.checksum import ChecksumMismatch, crc32c
from streamd.tiering.cluster_archive import METADATA_KIND, OFFSETS_KIND, unseal
from streamd.tiering.manifest import (
    ManifestError,
    PartitionManifest,
    SegmentMeta,
    load_partition_manifest,
    load_topic_manifest,
)
from streamd.tiering.restore import NoProgress, Progress
from streamd.tiering.store import ObjectInfo, ObjectNotFound, ObjectStore

CHUNK_BYTES = 8 << 20
CONCURRENCY = 4
CLUSTER_DOCUMENTS = {
    keys.CLUSTER_METADATA_KEY: METADATA_KIND,
    keys.CLUSTER_OFFSETS_KEY: OFFSETS_KIND,
}


class VerifyError(StreamdError):
    """The scrub could not run at all (store unreachable, nothing to verify)."""


@dataclass(frozen=True, kw_only=True)
class Problem:
    kind: str
    """missing | size_mismatch | checksum_mismatch | unreadable_manifest | unreadable_object"""
    key: str
    detail: str
    topic: str | None = None
    partition: int | None = None


@dataclass(kw_only=True)
class VerifyReport:
    store: str
    objects: int = 0
    bucket_bytes: int = 0
    partition_manifests: int = 0
    topic_manifests: int = 0
    cluster_documents: int = 0
    segments: int = 0
    verified_objects: int = 0
    verified_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    orphans: list[ObjectInfo] = field(default_factory=list)
    unverifiable: list[str] = field(default_factory=list)

    def ok(self, *, strict: bool = False) -> bool:
        return not self.problems and not (strict and self.orphans)

    def as_json(self, *, strict: bool = False) -> dict[str, Any]:
        return {
            "ok": self.ok(strict=strict),
            "store": self.store,
            "objects": self.objects,
            "bucket_bytes": self.bucket_bytes,
            "partition_manifests": self.partition_manifests,
            "topic_manifests": self.topic_manifests,
            "cluster_documents": self.cluster_documents,
            "segments": self.segments,
            "verified_objects": self.verified_objects,
            "verified_bytes": self.verified_bytes,
            "problems": [
                {"kind": p.kind, "key": p.key, "detail": p.detail, "topic": p.topic,
                 "partition": p.partition}
                for p in self.problems
            ],
            "orphans": [{"key": o.key, "size": o.size} for o in self.orphans],
            "unverifiable": list(self.unverifiable),
        }


def _partition_dir(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/"


async def verify_store(store: ObjectStore, progress: Progress | None = None) -> VerifyReport:
    progress = progress or NoProgress()
    report = VerifyReport(store=store.description)
    listing: dict[str, ObjectInfo] = {}
    progress.phase("listing the bucket", 0)
    async for info in store.list(""):
        listing[info.key] = info
        progress.advance(1)
    report.objects = len(listing)
    report.bucket_bytes = sum(i.size for i in listing.values())
    if not listing:
        raise VerifyError(f"{store.description} holds no objects: nothing to verify")

    named: set[str] = set()
    broken_prefixes: set[str] = set()
    manifests: list[PartitionManifest] = []
    manifest_names = (keys.PARTITION_MANIFEST_NAME, keys.TOPIC_MANIFEST_NAME)
    documents = [
        k for k in listing if k.rsplit("/", 1)[-1] in manifest_names or k in CLUSTER_DOCUMENTS
    ]
    progress.phase("reading manifests", len(documents))
    for key in sorted(documents):
        named.add(key)
        try:
            data = await store.get(key)
            name = key.rsplit("/", 1)[-1]
            if key in CLUSTER_DOCUMENTS:
                unseal(data, CLUSTER_DOCUMENTS[key])
                report.cluster_documents += 1
            elif name == keys.TOPIC_MANIFEST_NAME:
                load_topic_manifest(data)
                report.topic_manifests += 1
            else:
                manifests.append(load_partition_manifest(data))
                report.partition_manifests += 1
        except (ManifestError, RemoteStorageError) as exc:
            report.problems.append(Problem(kind="unreadable_manifest", key=key, detail=str(exc)))
            if key.endswith("/" + keys.PARTITION_MANIFEST_NAME):
                broken_prefixes.add(_partition_dir(key))
        progress.advance(1)

    work: list[tuple[PartitionManifest, SegmentMeta]] = [
        (m, s) for m in manifests for s in m.segments
    ]
    report.segments = len(work)
    for _, seg in work:
        named.update((seg.key, seg.index_key))
    total = sum(seg.size_bytes for _, seg in work) + sum(
        listing[s.index_key].size for _, s in work if s.index_key in listing
    )
    progress.phase("verifying segments and indexes", total)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(m: PartitionManifest, seg: SegmentMeta) -> None:
        async with sem:
            await _verify_segment(store, listing, m, seg, report, progress)

    await asyncio.gather(*(one(m, s) for m, s in work))

    for key in sorted(set(listing) - named):
        if key.startswith(keys.CLUSTER_PREFIX):
            continue
        if any(key.startswith(p) for p in broken_prefixes):
            report.unverifiable.append(key)
        else:
            report.orphans.append(listing[key])
    report.problems.sort(key=lambda p: (p.topic or "", p.partition or 0, p.key))
    return report


async def _verify_segment(
    store: ObjectStore,
    listing: dict[str, ObjectInfo],
    manifest: PartitionManifest,
    seg: SegmentMeta,
    report: VerifyReport,
    progress: Progress,
) -> None:
    where: dict[str, Any] = {"topic": manifest.topic, "partition": manifest.partition}
    span = f"offsets {seg.base_offset}-{seg.last_offset}"
    info = listing.get(seg.key)
    if info is None:
        report.problems.append(
            Problem(kind="missing", key=seg.key, detail=f"segment object of {span} is missing",
                    **where)
        )
    elif info.size != seg.size_bytes:
        report.problems.append(
            Problem(kind="size_mismatch", key=seg.key,
                    detail=f"segment of {span} has {info.size} bytes, manifest says "
                    f"{seg.size_bytes}", **where)
        )
        progress.advance(seg.size_bytes)
    else:
        try:
            actual = await _crc_of(store, seg.key, seg.size_bytes, progress)
        except RemoteStorageError as exc:
            report.problems.append(
                Problem(kind="unreadable_object", key=seg.key, detail=str(exc), **where)
            )
        else:
            if actual != seg.checksum:
                report.problems.append(
                    Problem(kind="checksum_mismatch", key=seg.key,
                            detail=f"segment of {span}: crc32c {actual}, manifest says "
                            f"{seg.checksum}", **where)
                )
            else:
                report.verified_objects += 1
                report.verified_bytes += seg.size_bytes
    index = listing.get(seg.index_key)
    if index is None:
        report.problems.append(
            Problem(kind="missing", key=seg.index_key, detail=f"index of {span} is missing",
                    **where)
        )
        return
    try:
        data = await store.get(seg.index_key)
    except ObjectNotFound:
        report.problems.append(
            Problem(kind="missing", key=seg.index_key, detail=f"index of {span} is missing",
                    **where)
        )
        return
    except RemoteStorageError as exc:
        kind = "checksum_mismatch" if isinstance(exc, ChecksumMismatch) else "unreadable_object"
        report.problems.append(Problem(kind=kind, key=seg.index_key, detail=str(exc), **where))
        return
    progress.advance(len(data))
    actual = format(crc32c(data), "08x")
    if actual != seg.index_checksum:
        report.problems.append(
            Problem(kind="checksum_mismatch", key=seg.index_key,
                    detail=f"index of {span}: crc32c {actual}, manifest says "
                    f"{seg.index_checksum}", **where)
        )
    else:
        report.verified_objects += 1
        report.verified_bytes += len(data)


async def _crc_of(store: ObjectStore, key: str, size: int, progress: Progress) -> str:
    value = 0
    position = 0
    while position < size:
        end = min(size, position + CHUNK_BYTES)
        chunk = await store.get(key, byte_range=(position, end))
        if not chunk:
            break
        value = crc32c(chunk, value)
        position += len(chunk)
        progress.advance(len(chunk))
    return format(value, "08x")


async def run_verify(cfg: BrokerConfig, progress: Progress | None = None) -> VerifyReport:
    """Open ``tiering.store`` as the broker would and scrub it."""
    from streamd.broker.restore import open_configured_store

    store = open_configured_store(cfg)
    try:
        await store.check()
        return await verify_store(store, progress)
    finally:
        await store.close()


def problem_rows(problems: Iterable[Problem]) -> list[tuple[str, str, str, str]]:
    return [
        (p.kind, f"{p.topic}/{p.partition}" if p.topic is not None else "-", p.key, p.detail)
        for p in problems
    ]
