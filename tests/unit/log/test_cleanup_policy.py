"""``cleanup.policy`` without ``delete``: time and size retention remove nothing (a compacted
topic loses superseded records to the log cleaner only, never to retention)."""

from pathlib import Path

from streamd.log.fsync import FsyncPolicy
from streamd.log.manager import LogManager

from .batches import simple_batch

DEFAULTS = {"segment.bytes": "2048", "index.interval.bytes": "256"}
LIMITS = {"retention.ms": "1", "retention.bytes": "100"}


async def test_retention_applies_only_with_the_delete_policy(tmp_path: Path) -> None:
    m = LogManager(tmp_path, defaults=DEFAULTS, fsync=FsyncPolicy.parse("never"))
    m.load()
    for name, policy in (("kept", "compact"), ("gone", "delete"), ("both", "compact,delete")):
        m.create_topic(name, 1, LIMITS | {"cleanup.policy": policy})
        for _ in range(20):
            await m.partition(name, 0).append(simple_batch(3, value_size=100), now_ms=1)
    removed = await m.run_housekeeping(now=10_000)
    assert set(removed) == {"gone-0", "both-0"}
    kept = m.partition("kept", 0)
    assert (kept.log_start_offset, kept.log_end_offset) == (0, 60)
    assert len(kept.segments) > 1
    await m.close()
