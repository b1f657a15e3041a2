"""The asyncio edge of the transaction coordinator: durability, markers, the clock.

:class:`TransactionService` owns one :class:`TransactionCoordinator` and one
:class:`TxnStateLog`. A request's transition is written (and fsynced) by one flusher task that
batches concurrent writes into one fsync, and only then completed in the coordinator and
answered. What the coordinator needs from its siblings comes through two protocols the broker
passes in (fail closed: there is no default):

- :class:`MarkerWriter` appends a COMMIT/ABORT marker to one partition (the log layer);
- :class:`GroupOffsets` checks a TxnOffsetCommit's member and generation (KIP-447) and applies
  a committed transaction's offsets (the group coordinator).

Ending a transaction (EndTxn, a timeout, a fencing InitProducerId) runs :meth:`_finish` once per
transactional id: write the markers of every partition concurrently (retrying a failed write
with backoff until it succeeds or the partition is gone), apply the offsets on commit, then
record CompleteCommit/CompleteAbort, fsynced before the id may begin its next transaction.
Were it lost while the next transaction's data reached a partition (a power failure after that
data's fsync, before the transaction log's), restart would find PrepareCommit and write the
markers again: the same producer id and epoch, so the repeated COMMIT would end the next
transaction's data too, records nobody committed. Lost before the next transaction began, the
Prepare record makes restart finish again (markers and offsets are idempotent to repeat). On
open, every transaction found preparing is finished before the broker serves clients, and data
the partitions hold open for a transaction the coordinator has no record of is aborted
(:meth:`_abort_unknown`).

Decisions recorded here:
- EndTxn is answered once the decision (PrepareCommit/PrepareAbort) is durable, as Kafka does;
  the markers follow. A request for the same id meanwhile (the producer's next transaction)
  waits for them (:meth:`_settled`) rather than being sent into a CONCURRENT_TRANSACTIONS retry
  backoff; a fenced InitProducerId waits for the abort before answering CONCURRENT_TRANSACTIONS,
  so the retry succeeds at once.
- AddPartitionsToTxn is written without an fsync of its own: a Produce of transactional data
  waits for one before its acknowledgement (:meth:`durable`), and EndTxn's decision is fsynced
  after it in the same file. Lost in a crash, it explains no acknowledged write, and the data
  it would have explained is aborted at open. Kafka makes it durable before answering; here
  that fsync would sit between the answer and the Produce instead of running beside the data's
  fsync, which cost about 30% of one producer's transactions per second (bench ``txn``).

``exit_after_markers`` is a test hook (``transaction.debug.exit_after_markers``): the process
exits right after that many markers of one commit are written, as a crash in the middle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from streamd.errors import ErrorCode, StreamdError
from streamd.txn.coordinator import Step, TransactionCoordinator, TxnConfig
from streamd.txn.model import PendingOffset, TopicPartition, TxnDescription
from streamd.txn.state_log import OffsetsRecord, Record, Snapshot, TxnStateLog

log = logging.getLogger("streamd.txn")

E = ErrorCode
END_TXN_WAIT_S = 10.0
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0


class MarkerWriter(Protocol):
    async def write_marker(
        self, topic: str, partition: int, producer_id: int, producer_epoch: int, commit: bool
    ) -> bool:
        """Append the marker and wait until it is durable; False when the partition does not
        exist (nothing to end there). Raises :class:`StreamdError` when the write failed."""
        ...

    def open_transactions(self) -> list[tuple[str, int, int, int]]:
        """(topic, partition, producer id, producer epoch) of every transaction the partitions
        hold open (data written, no marker yet)."""
        ...


class GroupOffsets(Protocol):
    def validate_txn_commit(
        self, group_id: str, generation: int, member_id: str, instance_id: str | None
    ) -> ErrorCode: ...

    async def commit_txn_offsets(self, group_id: str, offsets: list[PendingOffset]) -> None:
        """Apply (durably) offsets of a committed transaction; raises StreamdError."""
        ...


def wall_ms() -> int:
    return int(time.time() * 1000)


class TransactionService:
    def __init__(
        self,
        data_dir: Path,
        config: TxnConfig,
        allocate_producer_id: Callable[[], int],
        markers: MarkerWriter,
        groups: GroupOffsets,
        *,
        abort_interval_ms: int = 10_000,
        expiration_interval_ms: int = 3_600_000,
        exit_after_markers: int = -1,
    ) -> None:
        self.config = config
        self.log = TxnStateLog(Path(data_dir) / "transactions")
        self._allocate = allocate_producer_id
        self.coordinator = TransactionCoordinator(config, allocate_producer_id)
        self.markers = markers
        self.groups = groups
        self.abort_interval_ms = abort_interval_ms
        self.expiration_interval_ms = expiration_interval_ms
        self.exit_after_markers = exit_after_markers
        self._written = Snapshot()
        """What the file holds (records written, in order): the source of a compacting rewrite,
        which must keep transitions already written but not yet completed in the coordinator."""
        self._dirty = 0
        """Records queued without fsync so far; ``_synced`` is how many an fsync covers."""
        self._synced = 0
        self._offsets_applied: set[str] = set()
        """Committing transactions whose offsets EndTxn already applied."""
        self._queue: list[tuple[Record | None, bool]] = []
        self._queue_waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._finishing: dict[str, asyncio.Task[None]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the state and finish every transaction that was preparing at the crash."""
        snapshot = await asyncio.to_thread(self.log.load)
        if self.log.records > len(snapshot.txns) + len(snapshot.offsets):
            await asyncio.to_thread(self.log.rewrite, snapshot)
        self._written = Snapshot(
            dict(snapshot.txns), {t: list(o) for t, o in snapshot.offsets.items()}
        )
        self.coordinator = TransactionCoordinator(
            self.config, self._allocate, snapshot.txns, snapshot.offsets
        )
        preparing = [t for t, m in snapshot.txns.items() if m.state.preparing]
        log.info(
            "loaded %d transactional ids; finishing %d prepared transactions",
            len(snapshot.txns), len(preparing),
        )
        tasks = [self._finish_later(tid) for tid in preparing]
        if tasks:
            await asyncio.wait(tasks, timeout=END_TXN_WAIT_S)
        await self._abort_unknown()

    async def _abort_unknown(self) -> None:
        """Abort what partitions hold open for a transaction the coordinator does not have them
        in: data whose AddPartitionsToTxn never became durable (its Produce was never
        acknowledged either, see :meth:`durable`), so no marker would ever end it and its last
        stable offset would be stuck. No such transaction can have committed."""
        by_pid = {m.producer_id: m for m in self.coordinator.txns.values()}
        for topic, partition, pid, epoch in self.markers.open_transactions():
            meta = by_pid.get(pid)
            if meta is not None and (
                (meta.state.preparing or meta.state.value == "Ongoing")
                and (topic, partition) in meta.partitions
            ):
                continue
            log.warning(
                "aborting the transaction of producer %d open on %s-%d: the coordinator has "
                "no record of it there", pid, topic, partition,
            )
            await self._retrying(
                f"abort marker of producer {pid} on {topic}-{partition}",
                lambda t=topic, p=partition, i=pid, e=epoch: self.markers.write_marker(  # type: ignore[misc]
                    t, p, i, e, False
                ),
            )

    def start(self) -> asyncio.Task[None]:
        self._ticker = asyncio.create_task(self._tick_loop())
        return self._ticker

    async def close(self) -> None:
        self._closing = True
        tasks = [t for t in (self._ticker, *self._finishing.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        self.log.close()

    async def _tick_loop(self) -> None:
        next_expiry = wall_ms() + self.expiration_interval_ms
        while True:
            await asyncio.sleep(self.abort_interval_ms / 1000)
            now = wall_ms()
            try:
                for step in self.coordinator.timed_out(now):
                    assert step.target is not None
                    log.info(
                        "aborting transaction %s (producer %d): timed out after %d ms",
                        step.target.transactional_id, step.target.producer_id,
                        step.target.timeout_ms,
                    )
                    if await self._apply(step) is E.NONE:
                        self._finish_later(step.target.transactional_id)
                if now >= next_expiry:
                    next_expiry = now + self.expiration_interval_ms
                    for step in self.coordinator.expired(now):
                        await self._apply(step)
            except Exception:
                log.exception("transaction coordinator tick failed")

    # ---- requests --------------------------------------------------------------------------

    async def init_producer_id(
        self, transactional_id: str, timeout_ms: int, expected: tuple[int, int] | None
    ) -> tuple[ErrorCode, int, int]:
        step = self.coordinator.init_producer_id(
            transactional_id, timeout_ms, expected, wall_ms()
        )
        if step.error is E.CONCURRENT_TRANSACTIONS and await self._settled(transactional_id):
            step = self.coordinator.init_producer_id(
                transactional_id, timeout_ms, expected, wall_ms()
            )
        error = await self._apply(step)
        if error is not E.NONE or step.target is None:
            return error, -1, -1
        if step.fenced:
            await self._wait_finished(transactional_id)
            return E.CONCURRENT_TRANSACTIONS, -1, -1
        return E.NONE, step.target.producer_id, step.target.producer_epoch

    async def add_partitions(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        partitions: Iterable[TopicPartition],
    ) -> ErrorCode:
        partitions = list(partitions)
        step = self.coordinator.add_partitions(
            transactional_id, producer_id, epoch, partitions, wall_ms()
        )
        if step.error is E.CONCURRENT_TRANSACTIONS and await self._settled(transactional_id):
            step = self.coordinator.add_partitions(
                transactional_id, producer_id, epoch, partitions, wall_ms()
            )
        return await self._apply(step, sync=False)  # see the module docstring

    async def add_group(
        self, transactional_id: str, producer_id: int, epoch: int, group_id: str
    ) -> ErrorCode:
        step = self.coordinator.add_group(transactional_id, producer_id, epoch, group_id, wall_ms())
        if step.error is E.CONCURRENT_TRANSACTIONS and await self._settled(transactional_id):
            step = self.coordinator.add_group(
                transactional_id, producer_id, epoch, group_id, wall_ms()
            )
        return await self._apply(step)

    async def end_txn(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool
    ) -> ErrorCode:
        step = self.coordinator.end_txn(transactional_id, producer_id, epoch, commit, wall_ms())
        if step.error is E.CONCURRENT_TRANSACTIONS and await self._settled(transactional_id):
            step = self.coordinator.end_txn(
                transactional_id, producer_id, epoch, commit, wall_ms()
            )
        error = await self._apply(step)
        if error is E.NONE and step.target is not None:
            if commit and self.coordinator.pending_offsets(transactional_id):
                # A consume-transform-produce loop reads its position back next: let it find
                # the committed offsets (the output records follow with the markers).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._commit_offsets(transactional_id), END_TXN_WAIT_S)
                    self._offsets_applied.add(transactional_id)
            self._finish_later(transactional_id)
        return error

    async def durable(self) -> None:
        """Return once every transition written so far is fsynced (a Produce of transactional
        data waits for this before its acknowledgement: its AddPartitionsToTxn is then durable)."""
        if self._synced < self._dirty:
            await self._persist([], sync=True)

    async def txn_offset_commit(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        group_id: str,
        member: tuple[int, str, str | None],
        offsets: list[PendingOffset],
    ) -> ErrorCode:
        """One error for the whole request (Kafka answers it for every partition).
        ``member``: (generation, member id, group instance id), checked as Kafka does."""
        error = self.coordinator.check_offsets(transactional_id, producer_id, epoch, group_id)
        if error is not E.NONE:
            return error
        error = self.groups.validate_txn_commit(group_id, *member)
        if error is not E.NONE or not offsets:
            return error
        record = OffsetsRecord(transactional_id, producer_id, epoch, tuple(offsets))
        try:
            await self._persist([record], sync=True)
        except StreamdError as exc:
            return exc.code
        return self.coordinator.add_offsets(transactional_id, producer_id, epoch, offsets)

    def verify_produce(
        self, transactional_id: str, producer_id: int, epoch: int, topic: str, partition: int
    ) -> ErrorCode:
        return self.coordinator.verify_produce(
            transactional_id, producer_id, epoch, topic, partition
        )

    def has_pending_offset(self, group_id: str, topic: str, partition: int) -> bool:
        return self.coordinator.has_pending_offset(group_id, topic, partition)

    def describe(self, transactional_id: str) -> TxnDescription | None:
        return self.coordinator.describe(transactional_id)

    def list_transactions(
        self,
        states: Iterable[str] = (),
        producer_ids: Iterable[int] = (),
        min_duration_ms: int = -1,
        pattern: str | None = None,
    ) -> tuple[list[TxnDescription], list[str]]:
        return self.coordinator.list_transactions(
            states, producer_ids, min_duration_ms, pattern, wall_ms()
        )

    # ---- transitions -----------------------------------------------------------------------

    async def _apply(self, step: Step, *, sync: bool = True) -> ErrorCode:
        """Make ``step``'s transition durable, then current; its error otherwise."""
        target = step.target
        if target is None:
            return step.error
        try:
            await self._persist([target], sync=sync)
        except StreamdError as exc:
            self.coordinator.abandon(target.transactional_id)
            return exc.code
        self.coordinator.complete(target)
        return E.NONE

    def _finish_later(self, transactional_id: str) -> asyncio.Task[None]:
        task = self._finishing.get(transactional_id)
        if task is None or task.done():
            task = asyncio.create_task(self._finish(transactional_id))
            self._finishing[transactional_id] = task
            task.add_done_callback(lambda t: self._forget(transactional_id, t))
        return task

    def _forget(self, transactional_id: str, task: asyncio.Task[None]) -> None:
        if self._finishing.get(transactional_id) is task:
            del self._finishing[transactional_id]

    async def _wait_finished(self, transactional_id: str) -> None:
        task = self._finish_later(transactional_id)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), END_TXN_WAIT_S)

    async def _settled(self, transactional_id: str) -> bool:
        """A request found the id busy (a transition being written, or its transaction
        ending): wait for that, bounded, instead of sending the client into a retry backoff.
        True when there was something to wait for (the caller then tries again)."""
        task = self._finishing.get(transactional_id)
        if task is not None and not task.done():
            await self._wait_finished(transactional_id)
            return True
        return False

    async def _finish(self, transactional_id: str) -> None:
        meta = self.coordinator.txns.get(transactional_id)
        if meta is None or not meta.state.preparing:
            return
        commit = meta.state.value == "PrepareCommit"
        partitions = sorted(meta.partitions)
        written = 0

        async def one(topic: str, partition: int) -> None:
            nonlocal written
            await self._retrying(
                f"{'commit' if commit else 'abort'} marker of {transactional_id} on "
                f"{topic}-{partition}",
                lambda: self.markers.write_marker(
                    topic, partition, meta.producer_id, meta.producer_epoch, commit
                ),
            )
            written += 1
            if commit and written == self.exit_after_markers:
                log.error("transaction.debug.exit_after_markers: exiting after %d", written)
                os._exit(75)

        await asyncio.gather(*(one(t, p) for t, p in partitions))
        if commit and transactional_id not in self._offsets_applied:
            await self._commit_offsets(transactional_id)
        self._offsets_applied.discard(transactional_id)
        step = self.coordinator.complete_markers(transactional_id, wall_ms())
        await self._apply(step)  # durable before the next transaction: see the module docstring

    async def _commit_offsets(self, transactional_id: str) -> None:
        by_group: dict[str, list[PendingOffset]] = {}
        for o in self.coordinator.pending_offsets(transactional_id):
            by_group.setdefault(o.group_id, []).append(o)
        for group_id, offsets in sorted(by_group.items()):
            await self._retrying(
                f"offsets of group {group_id} committed by {transactional_id}",
                lambda g=group_id, o=offsets: self.groups.commit_txn_offsets(g, o),  # type: ignore[misc]
            )
        self.coordinator.release_offsets(transactional_id)

    async def _retrying(self, what: str, attempt: Callable[[], object]) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                await attempt()  # type: ignore[misc]
                return
            except StreamdError as exc:
                if self._closing:
                    raise
                log.error("%s failed (retrying in %.1fs): %s", what, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    # ---- durability ------------------------------------------------------------------------

    async def _persist(self, records: list[Record], *, sync: bool) -> None:
        if not sync and records and not self._queue and (
            self._flusher is None or self._flusher.done()
        ):
            self._write_now(records)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not sync:
            self._dirty += len(records)
        self._queue.extend((r, sync) for r in records)
        if sync and not records:
            self._queue.append((None, True))  # an fsync of what is written
        self._queue_waiters.append(done)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(done)

    def _write_now(self, records: list[Record]) -> None:
        """A record that needs no fsync, with nothing queued before it: one small write(2) into
        the page cache, done right here rather than through a worker thread (the next fsync
        covers it)."""
        try:
            self.log.append(records, sync=False)
        except OSError as exc:
            log.error("cannot write transaction state to %s: %s", self.log.path, exc)
            raise StreamdError(str(exc), code=E.COORDINATOR_NOT_AVAILABLE) from exc
        self._dirty += len(records)
        for record in records:
            self._written.apply(record)

    async def _flush(self) -> None:
        while self._queue:
            queued, waiters = self._queue, self._queue_waiters
            self._queue, self._queue_waiters = [], []
            records = [r for r, _ in queued if r is not None]
            sync = any(s for _, s in queued)
            covered = self._dirty
            error: StreamdError | None = None
            try:
                await asyncio.to_thread(self.log.append, records, sync=sync)
                if sync:
                    self._synced = max(self._synced, covered)
            except OSError as exc:
                log.error("cannot write transaction state to %s: %s", self.log.path, exc)
                error = StreamdError(str(exc), code=E.COORDINATOR_NOT_AVAILABLE)
            for waiter in waiters:
                if waiter.done():
                    continue
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
            if error is not None:
                continue
            written = self._written
            for record in records:
                written.apply(record)
            if self.log.needs_rewrite(len(written.txns) + len(written.offsets)):
                try:
                    await asyncio.to_thread(self.log.rewrite, written)
                except OSError as exc:
                    log.error("cannot compact %s (appends continue): %s", self.log.path, exc)
