"""How long ``streamd restore`` takes for a large archive: it must scale with metadata, not data.

Generates, directly in a ``file://`` store (no broker), an archive of ``--topics`` topics with
``--partitions`` partitions in total and ``--segments`` archived segments per partition: the
cluster metadata document, topic manifests, partition manifests, and one small placeholder
object per segment and per index (the manifest records the placeholder's size, so restore's
listing check passes; the bytes are never read). Then it times ``streamd restore --dry-run``
and a real ``streamd restore`` into an empty data_dir, each as a fresh process, as an operator
would run them.

    python bench/restore_scale.py                      # 100 partitions x 100 segments
    python bench/restore_scale.py --partitions 1000 --segments 10 --keep /tmp/archive
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamd.tiering import keys  # noqa: E402
from streamd.tiering.checksum import crc32c_hex  # noqa: E402
from streamd.tiering.cluster_archive import METADATA_KIND, OFFSETS_KIND, seal  # noqa: E402
from streamd.tiering.local_store import LocalStore  # noqa: E402
from streamd.tiering.manifest import (  # noqa: E402
    PartitionManifest,
    SegmentMeta,
    TopicManifest,
    dump_partition_manifest,
    dump_topic_manifest,
)


async def generate(root: Path, topics: int, partitions: int, segments: int, per: int,
                   object_bytes: int) -> None:
    store = LocalStore(root, fsync=False)
    sem = asyncio.Semaphore(64)
    body = b"x" * object_bytes
    crc = crc32c_hex(body)
    names = [f"bench-{i:03d}" for i in range(topics)]
    counts = [partitions // topics + (1 if i < partitions % topics else 0) for i in range(topics)]
    entries: list[dict[str, Any]] = []

    async def put(key: str, data: bytes) -> None:
        async with sem:
            await store.put(key, data)

    async def partition(name: str, tid: str, p: int) -> None:
        metas = []
        for s in range(segments):
            base, last = s * per, (s + 1) * per - 1
            seg_key = keys.segment_key(name, tid, p, base, last, incarnation="0a1b2c3d")
            idx_key = keys.segment_index_key(name, tid, p, base, last, incarnation="0a1b2c3d")
            await asyncio.gather(put(seg_key, body), put(idx_key, body))
            metas.append(SegmentMeta(
                base_offset=base, last_offset=last, size_bytes=object_bytes,
                first_timestamp=1_700_000_000_000 + base, max_timestamp=1_700_000_000_000 + last,
                record_count=per, checksum=crc, key=seg_key, index_key=idx_key,
                index_checksum=crc, uploaded_at_ms=1_700_000_000_000,
            ))
        manifest = PartitionManifest(
            topic=name, topic_id=tid, partition=p, remote_start_offset=0,
            last_uploaded_offset=segments * per - 1, segments=tuple(metas),
        )
        await put(keys.partition_manifest_key(name, tid, p), dump_partition_manifest(manifest))

    jobs = []
    for name, count in zip(names, counts, strict=True):
        tid = str(uuid.uuid4())
        configs = {"remote.storage.enable": "true", "segment.bytes": "1048576"}
        entries.append({"name": name, "topic_id": tid, "partitions": count, "overrides": configs})
        tm = TopicManifest(topic=name, topic_id=tid, partition_count=count, configs=configs)
        jobs.append(put(keys.topic_manifest_key(name, tid), dump_topic_manifest(tm)))
        jobs += [partition(name, tid, p) for p in range(count)]
    await asyncio.gather(*jobs)
    groups = {
        f"group-{g}": [
            {"topic": e["name"], "partition": p, "offset": per * segments // 2,
             "leader_epoch": -1, "metadata": "", "commit_ts": 1_700_000_000_000}
            for e in entries for p in range(e["partitions"])
        ]
        for g in range(3)
    }
    stamp = int(time.time() * 1000)
    await store.put(keys.CLUSTER_METADATA_KEY, seal(METADATA_KIND, {
        "cluster_id": "bench", "archived_at_ms": stamp, "topics": entries,
        "acls": {"version": 1, "acls": []}, "credentials": {"version": 1, "users": {}},
    }))
    await store.put(keys.CLUSTER_OFFSETS_KEY, seal(OFFSETS_KIND, {
        "cluster_id": "bench", "archived_at_ms": stamp, "groups": groups,
    }))


def restore(store_dir: Path, data_dir: Path, *extra: str) -> float:
    cmd = [sys.executable, "-m", "streamd", "restore", "--no-progress", "--format", "json",
           "--set", f"data_dir={data_dir}", "--set", f"tiering.store=file://{store_dir}", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"restore failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topics", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=100, help="in total")
    parser.add_argument("--segments", type=int, default=100, help="per partition")
    parser.add_argument("--records-per-segment", type=int, default=1000)
    parser.add_argument("--object-bytes", type=int, default=64,
                        help="size of each placeholder segment/index object")
    parser.add_argument("--keep", type=Path, help="generate here and keep it (default: temp)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="restore-scale-"))
    store_dir = args.keep or work / "bucket"
    try:
        if not (store_dir / keys.CLUSTER_METADATA_KEY).exists():
            t0 = time.monotonic()
            asyncio.run(generate(store_dir, args.topics, args.partitions, args.segments,
                                 args.records_per_segment, args.object_bytes))
            print(f"generated {args.partitions} partitions x {args.segments} segments in "
                  f"{time.monotonic() - t0:.1f}s under {store_dir}")
        dry = restore(store_dir, work / "dry", "--dry-run")
        real = restore(store_dir, work / "data")
        again = restore(store_dir, work / "data", "--force")
        segments = args.partitions * args.segments
        print(f"streamd restore --dry-run: {dry:.2f}s")
        print(f"streamd restore:           {real:.2f}s  ({segments} segments, "
              f"{args.partitions} partitions, {args.topics} topics)")
        print(f"streamd restore --force:   {again:.2f}s  (second run over the first)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
