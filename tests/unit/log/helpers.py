from pathlib import Path

from streamd.log.fsync import FsyncPolicy
from streamd.log.partition import PartitionLog
from streamd.log.topic_config import TopicConfig

from .batches import simple_batch


def config(**overrides: str) -> TopicConfig:
    base = {"index.interval.bytes": "256", "segment.bytes": "2048"}
    named = {k.replace("_", "."): v for k, v in overrides.items()}
    return TopicConfig.from_overrides({}, base | named)


def open_log(path: Path, fsync: str = "never", **overrides: str) -> PartitionLog:
    return PartitionLog.open(path, config(**overrides), fsync=FsyncPolicy.parse(fsync))


async def fill(
    plog: PartitionLog, batches: int, records: int = 3, ts: int = 1000, now_ms: int = 10_000
) -> None:
    for i in range(batches):
        await plog.append(simple_batch(records, ts=ts + 10 * i, value_size=100), now_ms=now_ms)


def read_all(plog: PartitionLog, offset: int) -> list[tuple[int, int]]:
    """(base offset, last offset) of every batch readable from ``offset``."""
    from streamd.log.batch import validate_produce_batches

    out = []
    while True:
        piece = plog.read(offset, 1 << 20)
        if piece is None:
            return out
        for h in validate_produce_batches(piece.read_bytes(), 1 << 30):
            out.append((h.base_offset, h.last_offset))
            offset = h.next_offset
