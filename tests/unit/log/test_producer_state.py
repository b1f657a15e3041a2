from pathlib import Path

import pytest

from streamd.log.batch import parse_header
from streamd.log.fsync import FsyncPolicy
from streamd.log.partition import PartitionLog
from streamd.log.producer_state import InvalidProducerEpoch, OutOfOrderSequence
from streamd.log.topic_config import TopicConfig
from tests.unit.log.batches import simple_batch


def open_log(path: Path) -> PartitionLog:
    return PartitionLog.open(path, TopicConfig(), fsync=FsyncPolicy.parse("always"))


def batch(n: int, pid: int = 7, epoch: int = 0, seq: int = 0) -> bytes:
    return simple_batch(n, producer_id=pid, producer_epoch=epoch, base_sequence=seq)


async def test_retried_batch_is_acknowledged_with_original_offsets(tmp_path: Path) -> None:
    plog = open_log(tmp_path)
    first = await plog.append(batch(3, seq=0), now_ms=1)
    second = await plog.append(batch(2, seq=3), now_ms=1)
    retry = await plog.append(batch(2, seq=3), now_ms=1)
    assert (retry.base_offset, retry.last_offset) == (second.base_offset, second.last_offset)
    retry_old = await plog.append(batch(3, seq=0), now_ms=1)
    assert retry_old.base_offset == first.base_offset
    assert plog.log_end_offset == 5
    await plog.close()


async def test_gap_in_sequence_is_out_of_order_and_appends_nothing(tmp_path: Path) -> None:
    plog = open_log(tmp_path)
    await plog.append(batch(3, seq=0), now_ms=1)
    with pytest.raises(OutOfOrderSequence):
        await plog.append(batch(1, seq=5), now_ms=1)
    assert plog.log_end_offset == 3
    await plog.close()


async def test_old_epoch_is_fenced_and_new_epoch_restarts_at_zero(tmp_path: Path) -> None:
    plog = open_log(tmp_path)
    await plog.append(batch(1, epoch=1, seq=0), now_ms=1)
    with pytest.raises(InvalidProducerEpoch):
        await plog.append(batch(1, epoch=0, seq=1), now_ms=1)
    with pytest.raises(OutOfOrderSequence):
        await plog.append(batch(1, epoch=2, seq=4), now_ms=1)
    await plog.append(batch(1, epoch=2, seq=0), now_ms=1)
    assert plog.log_end_offset == 2
    await plog.close()


async def test_non_idempotent_batches_are_never_deduplicated(tmp_path: Path) -> None:
    plog = open_log(tmp_path)
    await plog.append(simple_batch(2), now_ms=1)
    await plog.append(simple_batch(2), now_ms=1)
    assert plog.log_end_offset == 4
    await plog.close()


@pytest.mark.parametrize("clean", [True, False])
async def test_state_survives_restart(tmp_path: Path, clean: bool) -> None:
    plog = open_log(tmp_path)
    await plog.append(batch(2, seq=0), now_ms=1)
    second = await plog.append(batch(2, seq=2), now_ms=1)
    if clean:
        await plog.close()
    else:
        await plog.flush()
        for segment in plog.segments:
            segment.close()
    again = open_log(tmp_path)
    retry = await again.append(batch(2, seq=2), now_ms=1)
    assert retry.base_offset == second.base_offset and again.log_end_offset == 4
    with pytest.raises(OutOfOrderSequence):
        await again.append(batch(1, seq=9), now_ms=1)
    await again.close()


def test_header_fields_used_for_sequences() -> None:
    header = parse_header(batch(4, pid=99, epoch=3, seq=10))
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (99, 3, 10)
    assert header.last_offset_delta == 3
