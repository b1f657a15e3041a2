"""The transaction service with in-process stand-ins for the logs and the group coordinator:
markers are written before EndTxn is answered, a restart finishes prepared transactions, and a
failing marker write is retried."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import pytest

from streamd.errors import ErrorCode as E
from streamd.errors import StorageError
from streamd.txn.coordinator import TxnConfig
from streamd.txn.model import PendingOffset, TxnState
from streamd.txn.service import TransactionService
from streamd.txn.state_log import TxnStateLog


class Markers:
    def __init__(self, fail: int = 0) -> None:
        self.written: list[tuple[str, int, int, int, bool]] = []
        self.fail = fail
        self.open: list[tuple[str, int, int, int]] = []

    async def write_marker(
        self, topic: str, partition: int, producer_id: int, epoch: int, commit: bool
    ) -> bool:
        if self.fail:
            self.fail -= 1
            raise StorageError("disk on fire")
        self.written.append((topic, partition, producer_id, epoch, commit))
        return True

    def open_transactions(self) -> list[tuple[str, int, int, int]]:
        return list(self.open)


class Groups:
    def __init__(self) -> None:
        self.committed: dict[str, list[PendingOffset]] = {}

    def validate_txn_commit(
        self, group_id: str, generation: int, member_id: str, instance_id: str | None
    ) -> E:
        return E.ILLEGAL_GENERATION if generation == 99 else E.NONE

    async def commit_txn_offsets(self, group_id: str, offsets: list[PendingOffset]) -> None:
        self.committed.setdefault(group_id, []).extend(offsets)


def service(tmp_path: Path, markers: Markers, groups: Groups) -> TransactionService:
    ids = itertools.count(1)
    return TransactionService(
        tmp_path, TxnConfig(), lambda: next(ids), markers, groups, abort_interval_ms=50
    )


async def test_commit_writes_markers_and_offsets_before_answering(tmp_path: Path) -> None:
    markers, groups = Markers(), Groups()
    svc = service(tmp_path, markers, groups)
    await svc.open()
    error, pid, epoch = await svc.init_producer_id("t", 60_000, None)
    assert error is E.NONE
    assert await svc.add_partitions("t", pid, epoch, [("a", 0), ("b", 1)]) is E.NONE
    assert await svc.add_group("t", pid, epoch, "g") is E.NONE
    offsets = [PendingOffset("g", "in", 0, 10)]
    assert await svc.txn_offset_commit("t", pid, epoch, "g", (99, "m", None), offsets) is (
        E.ILLEGAL_GENERATION
    )
    assert await svc.txn_offset_commit("t", pid, epoch, "g", (-1, "", None), offsets) is E.NONE
    assert svc.has_pending_offset("g", "in", 0)
    assert await svc.end_txn("t", pid, epoch, True) is E.NONE
    assert svc.describe("t").state == "PrepareCommit"  # type: ignore[union-attr]
    # The next transaction may begin at once: the broker waits for the markers and the
    # Complete record itself rather than answering CONCURRENT_TRANSACTIONS.
    assert await svc.add_partitions("t", pid, epoch, [("a", 0)]) is E.NONE
    assert sorted(markers.written) == [("a", 0, pid, epoch, True), ("b", 1, pid, epoch, True)]
    assert groups.committed == {"g": offsets}
    assert svc.describe("t").state == "Ongoing"  # type: ignore[union-attr]
    await svc.close()


async def test_restart_finishes_a_prepared_commit(tmp_path: Path) -> None:
    svc = service(tmp_path, Markers(), Groups())
    await svc.open()
    _, pid, epoch = await svc.init_producer_id("t", 60_000, None)
    await svc.add_partitions("t", pid, epoch, [("a", 0)])
    await svc.add_group("t", pid, epoch, "g")
    offsets = [PendingOffset("g", "in", 0, 10)]
    await svc.txn_offset_commit("t", pid, epoch, "g", (-1, "", None), offsets)
    step = svc.coordinator.end_txn("t", pid, epoch, True, 0)
    await svc._apply(step)  # PrepareCommit is durable; then the broker dies
    await svc.close()
    markers, groups = Markers(), Groups()
    again = service(tmp_path, markers, groups)
    await again.open()
    assert markers.written == [("a", 0, pid, epoch, True)]
    assert groups.committed == {"g": offsets}
    assert again.describe("t").state == "CompleteCommit"  # type: ignore[union-attr]
    await again.close()
    assert TxnStateLog(tmp_path / "transactions").load().txns["t"].state is (
        TxnState.COMPLETE_COMMIT
    )


async def test_failed_marker_write_is_retried(tmp_path: Path) -> None:
    markers = Markers(fail=2)
    svc = service(tmp_path, markers, Groups())
    await svc.open()
    _, pid, epoch = await svc.init_producer_id("t", 60_000, None)
    await svc.add_partitions("t", pid, epoch, [("a", 0)])
    assert await svc.end_txn("t", pid, epoch, False) is E.NONE
    assert await svc.end_txn("t", pid, epoch, False) is E.NONE  # a retry waits for the end
    assert markers.written == [("a", 0, pid, epoch, False)] and markers.fail == 0
    assert svc.describe("t").state == "CompleteAbort"  # type: ignore[union-attr]
    await svc.close()


async def test_timed_out_transaction_is_aborted_by_the_ticker(tmp_path: Path) -> None:
    markers = Markers()
    svc = service(tmp_path, markers, Groups())
    await svc.open()
    svc.start()
    _, pid, epoch = await svc.init_producer_id("t", 100, None)
    await svc.add_partitions("t", pid, epoch, [("a", 0)])
    for _ in range(100):
        if markers.written:
            break
        await asyncio.sleep(0.02)
    assert markers.written == [("a", 0, pid, epoch + 1, False)]
    assert await svc.end_txn("t", pid, epoch, True) is E.PRODUCER_FENCED
    await svc.close()


async def test_open_aborts_open_data_the_coordinator_does_not_know(tmp_path: Path) -> None:
    """Data whose AddPartitionsToTxn was lost (never fsynced, its Produce never acknowledged)
    is aborted at start; a partition of a known ongoing transaction is left alone."""
    svc = service(tmp_path, Markers(), Groups())
    await svc.open()
    _, pid, epoch = await svc.init_producer_id("t", 60_000, None)
    await svc.add_partitions("t", pid, epoch, [("a", 0)])
    await svc.durable()
    await svc.close()
    markers = Markers()
    markers.open = [("a", 0, pid, epoch), ("b", 0, pid, epoch), ("c", 1, 999, 4)]
    again = service(tmp_path, markers, Groups())
    await again.open()
    assert sorted(markers.written) == [("b", 0, pid, epoch, False), ("c", 1, 999, 4, False)]
    assert again.describe("t").state == "Ongoing"  # type: ignore[union-attr]
    await again.close()


async def test_durable_waits_for_an_fsync_of_unsynced_transitions(tmp_path: Path) -> None:
    svc = service(tmp_path, Markers(), Groups())
    await svc.open()
    _, pid, epoch = await svc.init_producer_id("t", 60_000, None)
    synced = svc._synced
    await svc.add_partitions("t", pid, epoch, [("a", 0)])  # written, not fsynced
    assert svc._dirty > svc._synced == synced
    await svc.durable()
    assert svc._synced == svc._dirty
    await svc.close()


class Partitions(Markers):
    """Markers plus the open transactions they end, as partition logs keep them: data of a
    producer opens its transaction on a partition, the next marker of that producer ends it."""

    def produce(self, topic: str, partition: int, producer_id: int, epoch: int) -> None:
        if not any(o[:3] == (topic, partition, producer_id) for o in self.open):
            self.open.append((topic, partition, producer_id, epoch))

    async def write_marker(
        self, topic: str, partition: int, producer_id: int, epoch: int, commit: bool
    ) -> bool:
        await super().write_marker(topic, partition, producer_id, epoch, commit)
        self.open = [o for o in self.open if o[:3] != (topic, partition, producer_id)]
        return True


def fsynced_prefix(svc: TransactionService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of the state log each fsync covers: a power failure keeps that much."""
    sizes = [0]
    fsync = os.fsync

    def tracked(fd: int) -> None:
        fsync(fd)
        if fd == svc.log._fd:
            sizes.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fsync", tracked)
    return sizes


async def test_power_loss_after_the_next_transactions_data_never_commits_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committed transaction, then the next one's AddPartitionsToTxn and its data on the same
    partition; the power fails before the transaction log is fsynced again. The restart must
    not end the second transaction's data with the first one's COMMIT marker (same producer id
    and epoch): the records of a transaction nobody committed would become visible."""
    partitions, groups = Partitions(), Groups()
    svc = service(tmp_path, partitions, groups)
    sizes = fsynced_prefix(svc, monkeypatch)
    await svc.open()
    _, pid, epoch = await svc.init_producer_id("t", 60_000, None)
    assert await svc.add_partitions("t", pid, epoch, [("a", 0)]) is E.NONE
    partitions.produce("a", 0, pid, epoch)
    await svc.durable()  # that Produce is acknowledged
    assert await svc.end_txn("t", pid, epoch, True) is E.NONE
    assert await svc.add_partitions("t", pid, epoch, [("a", 0)]) is E.NONE
    partitions.produce("a", 0, pid, epoch)  # durable in the partition, not yet acknowledged
    await svc.close()
    with open(svc.log.path, "r+b") as f:
        f.truncate(sizes[-1])
    partitions.written.clear()
    again = service(tmp_path, partitions, groups)
    await again.open()
    assert ("a", 0, pid, epoch, True) not in partitions.written
    await again.close()
