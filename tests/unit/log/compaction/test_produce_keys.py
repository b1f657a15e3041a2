"""A compacted topic refuses records without a key (Kafka's LogValidator rule)."""

from pathlib import Path

import pytest

from streamd.errors import ErrorCode, InvalidRecord
from streamd.log.partition import PartitionLog
from streamd.log.topic_config import TopicConfig

from ..batches import build_batch


def _open(tmp_path: Path, policy: str) -> PartitionLog:
    config = TopicConfig.from_overrides({}, {"cleanup.policy": policy})
    return PartitionLog.open(tmp_path / "topic-x" / "3", config)


@pytest.mark.parametrize("codec", [None, "gzip", "zstd"])
async def test_a_keyless_record_is_refused_and_nothing_is_appended(
    tmp_path: Path, codec: str | None
) -> None:
    plog = _open(tmp_path, "compact,delete")
    mixed = build_batch([(b"k", b"v", [], 1), (None, b"w", [], 2)], compression=codec)
    with pytest.raises(InvalidRecord) as caught:
        await plog.append(mixed, now_ms=1)
    assert caught.value.code == ErrorCode.INVALID_RECORD
    assert str(caught.value) == (
        "Compacted topic cannot accept message without key in topic partition topic-x-3."
    )
    assert plog.log_end_offset == 0 and plog.size_bytes == 0
    keyed = build_batch([(b"k", b"v", [], 1)], compression=codec)
    assert (await plog.append(keyed, now_ms=1)).base_offset == 0
    await plog.close()


async def test_other_topics_take_keyless_records(tmp_path: Path) -> None:
    plog = _open(tmp_path, "delete")
    await plog.append(build_batch([(None, b"v", [], 1)]), now_ms=1)
    assert plog.log_end_offset == 1
    await plog.close()
