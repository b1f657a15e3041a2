"""Total retention of a tiered partition, applied to its manifest (invariant 5).

For a topic with ``remote.storage.enable`` the local disk keeps only ``local.retention.*``; the
total limits ``retention.ms`` / ``retention.bytes`` govern the archive. Like Kafka's log
retention they remove whole segments from the oldest end and stop at the first segment that is
kept:

- ``retention.ms``: a segment whose max timestamp is older than ``now - retention.ms``;
- ``retention.bytes``: while the partition (archived bytes plus local bytes not yet archived)
  stays at or above the limit without the segment.

The result is a new remote start offset. The caller stores the advanced manifest first and only
then deletes the objects of the segments that fell below it, so a crash in between leaves
unreferenced objects (harmless) and never a manifest naming a deleted object.
"""

from __future__ import annotations

from streamd.tiering.manifest import PartitionManifest


def plan_remote_start(
    manifest: PartitionManifest,
    *,
    now_ms: int,
    retention_ms: int,
    retention_bytes: int,
    local_bytes_not_archived: int = 0,
) -> int | None:
    """The offset the remote start should advance to, or None when nothing expires."""
    total = manifest.size_bytes + local_bytes_not_archived
    new_start: int | None = None
    for segment in manifest.segments:
        expired = retention_ms >= 0 and now_ms - segment.max_timestamp > retention_ms
        oversize = retention_bytes >= 0 and total - segment.size_bytes >= retention_bytes
        if not (expired or oversize):
            break
        total -= segment.size_bytes
        new_start = segment.last_offset + 1
    return new_start
