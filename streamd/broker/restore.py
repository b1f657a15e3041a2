"""``streamd restore``, broker side: rebuild a data_dir from the bucket alone (offline).

The tiering layer reads the archive into a plan and rebuilds topics and partitions
(:mod:`streamd.tiering.restore`); this module adds what only the broker layer may touch: the
committed group offsets (the groups offset log), ACLs and SCRAM credentials (the security
stores, restored as archived: salted and hashed) and the cluster id, so the restored broker
continues the same archive (see :mod:`streamd.tiering.cluster_archive`).

Decisions:

- A data_dir holding any file is refused unless ``--force``; the refusal says what is there.
  ``--force`` replaces what the restore covers (the restored topics, their group offsets, and
  on a full restore ACLs, users and the cluster id) and leaves everything else alone.
- ``--topic`` restores those topics and their group offsets only; ACLs, users and the cluster
  id of the data_dir are left as they are (when the data_dir has no cluster id yet, the
  archived one is written so the broker continues the same archive).
- ``--dry-run`` reads exactly what a real run reads and writes nothing, not even on a
  non-empty data_dir (the plan then notes that a real run would need ``--force``).
- Running restore twice (with ``--force``) yields the same data_dir: every write replaces whole
  documents or whole topic directories with the same content.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamd.broker.lock import LOCK_NAME, DataDirLock
from streamd.config import BrokerConfig
from streamd.groups.model import OffsetInfo
from streamd.groups.service import GroupService
from streamd.log.files import atomic_write
from streamd.security.service import SecurityService
from streamd.tiering.restore import (
    NoProgress,
    Progress,
    RestoreError,
    RestorePlan,
    Skipped,
    read_plan,
    write_topics,
)
from streamd.tiering.store import ObjectStore, open_store
from streamd.transforms.spec import SpecError
from streamd.transforms.store import DeploymentStore

CLUSTER_FILE = "cluster.json"
log = logging.getLogger("streamd.restore")


@dataclass(frozen=True, kw_only=True)
class RestoreResult:
    plan: RestorePlan
    data_dir: Path
    written: bool
    present: str = ""
    """What the data_dir held before (empty: nothing)."""
    failures: tuple[Skipped, ...] = ()
    restored_groups: int = 0
    restored_offsets: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def not_restored(self) -> tuple[Skipped, ...]:
        return (*self.plan.skipped, *self.plan.gaps, *self.failures)

    @property
    def complete(self) -> bool:
        return not (self.plan.gaps or self.failures or self.plan.skipped)


def s3_options(cfg: BrokerConfig) -> dict[str, Any]:
    """The ``tiering.s3.*`` settings as :func:`open_store` takes them."""
    return {
        "endpoint_url": cfg["tiering.s3.endpoint_url"],
        "region": cfg["tiering.s3.region"],
        "access_key_id": cfg["tiering.s3.access_key_id"],
        "secret_access_key": cfg["tiering.s3.secret_access_key"],
        "path_style": cfg["tiering.s3.path_style"],
    }


def open_configured_store(cfg: BrokerConfig) -> ObjectStore:
    """The object store named by ``tiering.store`` with the ``tiering.s3.*`` settings."""
    return open_store(cfg["tiering.store"], s3_options=s3_options(cfg))


def describe_contents(data_dir: Path, limit: int = 5) -> str:
    """What a data_dir holds ("" when it is missing or holds no file at all)."""
    if not data_dir.is_dir():
        return ""
    parts = []
    for entry in sorted(data_dir.iterdir()):
        if entry.name == LOCK_NAME:
            continue  # left by a broker that stopped: not data
        if entry.is_dir():
            if not _has_file(entry):
                continue
            if entry.name == "topics":
                names = sorted(p.name for p in entry.iterdir() if p.is_dir())
                shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
                parts.append(f"{len(names)} topic(s): {shown}")
            else:
                parts.append(f"{entry.name}/")
        else:
            parts.append(entry.name)
    return "; ".join(parts)


def _has_file(directory: Path) -> bool:
    return any(files for _, _, files in os.walk(directory))


async def run_restore(
    cfg: BrokerConfig,
    *,
    topics: Iterable[str] = (),
    dry_run: bool = False,
    force: bool = False,
    allow_missing_manifest: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Plan, and unless ``dry_run`` write, the restore of ``cfg.data_dir`` from the bucket.
    A real run holds the data_dir lock (see :mod:`streamd.broker.lock`) throughout, so it
    never writes under a running broker."""
    progress = progress or NoProgress()
    if dry_run:
        return await _plan(
            cfg, topics, dry_run=True, force=force,
            allow_missing_manifest=allow_missing_manifest, progress=progress,
        )
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(cfg.data_dir)  # never write under a running broker
    lock.acquire()
    try:
        return await _plan(
            cfg, topics, dry_run=False, force=force,
            allow_missing_manifest=allow_missing_manifest, progress=progress,
        )
    finally:
        lock.release()


async def _plan(
    cfg: BrokerConfig,
    topics: Iterable[str],
    *,
    dry_run: bool,
    force: bool,
    allow_missing_manifest: bool,
    progress: Progress,
) -> RestoreResult:
    data_dir = cfg.data_dir
    present = describe_contents(data_dir)
    if present and not (force or dry_run):
        raise RestoreError(
            f"data_dir {data_dir} is not empty ({present}); use --force to restore over it"
        )
    wanted = list(topics) or None
    store = open_configured_store(cfg)
    try:
        plan = await read_plan(
            store, wanted, progress, allow_missing_manifest=allow_missing_manifest
        )
    finally:
        await store.close()
    notes = []
    if present and dry_run and not force:
        notes.append(f"data_dir is not empty ({present}): a real run needs --force")
    if dry_run:
        return RestoreResult(
            plan=plan, data_dir=data_dir, written=False, present=present, notes=tuple(notes)
        )

    return await _write(cfg, plan, data_dir, present, wanted, notes, progress)


async def _write(
    cfg: BrokerConfig,
    plan: RestorePlan,
    data_dir: Path,
    present: str,
    wanted: list[str] | None,
    notes: list[str],
    progress: Progress,
) -> RestoreResult:
    log.info(
        "restore from %s into %s: %d topic(s), %d segment(s) archived, %d group(s)",
        plan.store, data_dir, len(plan.topics), sum(t.segments for t in plan.topics),
        len(plan.offsets),
    )
    failures = await write_topics(plan, data_dir, cfg.topic_defaults, progress)
    failed = {f.what.removeprefix("topic ") for f in failures}
    for topic in plan.topics:
        if topic.name not in failed:
            log.info(
                "restored topic %s (%d partition(s), %d archived segment(s))",
                topic.name, len(topic.partitions), topic.segments,
            )
    for failure in failures:
        log.warning("not restored: %s: %s", failure.what, failure.why)
    offsets = {
        group: [e for e in entries if e["topic"] not in failed]
        for group, entries in plan.offsets.items()
    }
    restored = {t.name for t in plan.topics} - failed
    groups, count = await _write_offsets(data_dir, offsets, restored)
    log.info("restored %d committed offset(s) of %d group(s)", count, groups)
    if plan.acls is not None and plan.credentials is not None:
        security = SecurityService(data_dir, cfg.values)
        security.acls.replace_all(plan.acls)
        security.credentials.replace_all(plan.credentials)
        log.info("restored ACLs and SCRAM users")
    if plan.transforms is not None:
        notes += _write_transforms(data_dir, plan.transforms)
    if plan.cluster_id:
        notes += _write_cluster_id(data_dir, plan.cluster_id, cfg, full=wanted is None)
        log.info("cluster id %s", plan.cluster_id)
    return RestoreResult(
        plan=plan,
        data_dir=data_dir,
        written=True,
        present=present,
        failures=tuple(failures),
        restored_groups=groups,
        restored_offsets=count,
        notes=tuple(notes),
    )


async def _write_offsets(
    data_dir: Path, offsets: Mapping[str, list[dict[str, Any]]], topics: set[str]
) -> tuple[int, int]:
    """Replace the committed offsets of ``topics`` in the groups offset log (others stay)."""
    offset_log = GroupService(data_dir).log
    snapshot = offset_log.load()
    try:
        for group in list(snapshot):
            kept = {tp: info for tp, info in snapshot[group].items() if tp[0] not in topics}
            if kept:
                snapshot[group] = kept
            else:
                del snapshot[group]
        count = 0
        for group, entries in offsets.items():
            for e in entries:
                info = OffsetInfo(
                    int(e["offset"]), int(e["leader_epoch"]), str(e["metadata"]),
                    int(e["commit_ts"]),
                )
                snapshot.setdefault(group, {})[(str(e["topic"]), int(e["partition"]))] = info
                count += 1
        offset_log.rewrite(snapshot)
    finally:
        offset_log.close()
    return sum(1 for entries in offsets.values() if entries), count


def _write_transforms(data_dir: Path, documents: list[dict[str, Any]]) -> list[str]:
    """Archived transform deployments replace the data_dir's (a full restore only)."""
    directory = data_dir / "transforms"
    shutil.rmtree(directory, ignore_errors=True)
    try:
        names = DeploymentStore(directory).restore(documents)
    except (SpecError, KeyError, OSError) as exc:
        return [f"transform deployments not restored: {exc}"]
    return [f"{len(names)} transform deployment(s) restored"] if names else []


def _write_cluster_id(
    data_dir: Path, cluster_id: str, cfg: BrokerConfig, *, full: bool
) -> list[str]:
    path = data_dir / CLUSTER_FILE
    try:
        current = json.loads(path.read_text())["cluster_id"]
    except (OSError, ValueError, KeyError, TypeError):
        current = None
    notes = []
    if current is None or (full and current != cluster_id):
        atomic_write(path, json.dumps({"cluster_id": cluster_id}).encode())
    elif current != cluster_id:
        notes.append(
            f"data_dir keeps its cluster id {current!r} (archive: {cluster_id!r}); its broker "
            "will not archive cluster metadata into this bucket"
        )
    configured = cfg["cluster_id"]
    if configured and configured != cluster_id:
        notes.append(
            f"config cluster_id {configured!r} differs from the archived {cluster_id!r}; the "
            "broker will not archive cluster metadata into this bucket until they match"
        )
    return notes
