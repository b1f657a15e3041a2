"""The transaction coordinator as a state machine: no sockets, no clock, no disk, no codec.

Every request returns a :class:`Step`: an error to answer with at once, or a ``target``
transition that the caller must make durable before it takes effect. While a transition is
being made durable the transactional id is *pending* (:meth:`TransactionCoordinator.begin`):
other requests for it get CONCURRENT_TRANSACTIONS, and nothing else (Produce verification,
DescribeTransactions) sees the new state until :meth:`TransactionCoordinator.complete`. This is
what keeps a partition from accepting transactional data for a transaction the coordinator
could forget in a crash. A failed write calls :meth:`TransactionCoordinator.abandon`.

Semantics follow Kafka's ``TransactionCoordinator`` for clients without KIP-890 part 2
(transaction version 1; no epoch bump per transaction):

- InitProducerId: a new id gets a producer id and epoch 0; an idle one gets epoch + 1 (a new
  producer id once the epoch is exhausted, KIP-360); an ongoing transaction is first aborted
  with the epoch bumped (fencing the old producer) and the caller answered
  CONCURRENT_TRANSACTIONS so that it retries. A request carrying the producer's current id and
  epoch (KIP-360) is checked against them: a zombie gets PRODUCER_FENCED.
- AddPartitionsToTxn / AddOffsetsToTxn move an idle transaction to Ongoing (its timeout starts)
  and add partitions or a group; EndTxn moves Ongoing to PrepareCommit / PrepareAbort. A retried
  EndTxn whose outcome is already complete answers NONE; the other outcome INVALID_TXN_STATE.
- Offsets of a TxnOffsetCommit are held here, per transactional id, and applied to the group
  only when the transaction commits (:meth:`TransactionCoordinator.pending_offsets`).
- :meth:`timed_out` aborts (with an epoch bump) every Ongoing transaction older than its
  timeout; :meth:`expired` removes ids idle for ``transactional.id.expiration.ms``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from streamd.errors import ErrorCode
from streamd.txn.model import (
    MAX_EPOCH,
    NO_EPOCH,
    NO_PRODUCER_ID,
    PendingOffset,
    TopicPartition,
    TxnDescription,
    TxnMetadata,
    TxnState,
    epoch_exhausted,
)

E = ErrorCode
S = TxnState
OffsetKey = tuple[str, str, int]
"""(group, topic, partition)"""


@dataclass(frozen=True, slots=True)
class TxnConfig:
    max_timeout_ms: int = 900_000
    id_expiration_ms: int = 604_800_000


@dataclass(frozen=True, slots=True)
class Step:
    error: ErrorCode = E.NONE
    target: TxnMetadata | None = None
    """A transition to make durable, then :meth:`TransactionCoordinator.complete`."""
    fenced: bool = False
    """InitProducerId found a transaction ongoing: ``target`` aborts it; answer
    CONCURRENT_TRANSACTIONS once that abort is done (the client retries)."""


class TransactionCoordinator:
    def __init__(
        self,
        config: TxnConfig,
        allocate_producer_id: Callable[[], int],
        txns: Mapping[str, TxnMetadata] | None = None,
        offsets: Mapping[str, Iterable[PendingOffset]] | None = None,
    ) -> None:
        self.config = config
        self._allocate = allocate_producer_id
        self.txns: dict[str, TxnMetadata] = dict(txns or {})
        self.pending: dict[str, TxnMetadata] = {}
        self.offsets: dict[str, dict[OffsetKey, PendingOffset]] = {
            tid: {(o.group_id, o.topic, o.partition): o for o in pending}
            for tid, pending in (offsets or {}).items()
        }

    # ---- durability handshake --------------------------------------------------------------

    def _begin(self, target: TxnMetadata, *, fenced: bool = False) -> Step:
        self.pending[target.transactional_id] = target
        return Step(target=target, fenced=fenced)

    def complete(self, target: TxnMetadata) -> None:
        """The transition is durable: it becomes the current state."""
        tid = target.transactional_id
        self.pending.pop(tid, None)
        if target.state is S.DEAD:
            self.txns.pop(tid, None)
        else:
            self.txns[tid] = target
        if target.state.idle or target.state is S.DEAD:
            self.offsets.pop(tid, None)

    def abandon(self, transactional_id: str) -> None:
        """The transition could not be made durable: the id keeps its previous state."""
        self.pending.pop(transactional_id, None)

    # ---- InitProducerId --------------------------------------------------------------------

    def init_producer_id(
        self,
        transactional_id: str,
        timeout_ms: int,
        expected: tuple[int, int] | None,
        now_ms: int,
    ) -> Step:
        """``expected``: the (producer id, epoch) the client already holds (KIP-360), if any."""
        if not transactional_id:
            return Step(E.INVALID_REQUEST)
        if not 0 < timeout_ms <= self.config.max_timeout_ms:
            return Step(E.INVALID_TRANSACTION_TIMEOUT)
        if transactional_id in self.pending:
            return Step(E.CONCURRENT_TRANSACTIONS)
        meta = self.txns.get(transactional_id)
        if meta is None:
            meta = TxnMetadata(
                transactional_id=transactional_id,
                producer_id=self._allocate(),
                timeout_ms=timeout_ms,
                update_ms=now_ms,
            )
        if expected is not None and not (
            meta.producer_epoch == NO_EPOCH
            or expected[0] == meta.producer_id
            or (expected[0] == meta.previous_producer_id and epoch_exhausted(expected[1]))
        ):
            return Step(E.PRODUCER_FENCED)
        if meta.state.preparing:
            return Step(E.CONCURRENT_TRANSACTIONS)
        if meta.state is S.ONGOING:
            return self._begin(self._fence(meta, now_ms), fenced=True)
        if epoch_exhausted(meta.producer_epoch) and (
            expected is None or expected[1] == meta.producer_epoch
        ):
            rotated = replace(
                meta,
                producer_id=self._allocate(),
                previous_producer_id=meta.producer_id,
                producer_epoch=0,
                last_producer_epoch=meta.producer_epoch if expected is not None else NO_EPOCH,
            )
            return self._begin(self._idle(rotated, S.EMPTY, timeout_ms, now_ms))
        if expected is None:
            epochs = (meta.producer_epoch + 1, NO_EPOCH)
        elif meta.producer_epoch == NO_EPOCH or expected[1] == meta.producer_epoch:
            epochs = (meta.producer_epoch + 1, meta.producer_epoch)
        elif expected[1] == meta.last_producer_epoch:
            epochs = (meta.producer_epoch, meta.last_producer_epoch)  # a retry: no new bump
        else:
            return Step(E.PRODUCER_FENCED)
        bumped = replace(meta, producer_epoch=epochs[0], last_producer_epoch=epochs[1])
        return self._begin(self._idle(bumped, S.EMPTY, timeout_ms, now_ms))

    @staticmethod
    def _idle(meta: TxnMetadata, state: TxnState, timeout_ms: int, now_ms: int) -> TxnMetadata:
        return replace(
            meta,
            state=state,
            timeout_ms=timeout_ms,
            partitions=frozenset(),
            groups=frozenset(),
            start_ms=-1,
            update_ms=now_ms,
        )

    @staticmethod
    def _fence(meta: TxnMetadata, now_ms: int) -> TxnMetadata:
        """Abort the ongoing transaction with the epoch bumped, so the old producer is fenced
        on every partition that gets the marker and at the coordinator."""
        epoch = meta.producer_epoch + 1 if meta.producer_epoch < MAX_EPOCH else MAX_EPOCH
        return replace(
            meta,
            state=S.PREPARE_ABORT,
            producer_epoch=epoch,
            last_producer_epoch=NO_EPOCH,
            update_ms=now_ms,
        )

    # ---- the transaction -------------------------------------------------------------------

    def _check(self, transactional_id: str, producer_id: int, epoch: int) -> ErrorCode:
        if not transactional_id:
            return E.INVALID_REQUEST
        meta = self.txns.get(transactional_id)
        if meta is None or meta.producer_id != producer_id:
            return E.INVALID_PRODUCER_ID_MAPPING
        if meta.producer_epoch != epoch:
            return E.PRODUCER_FENCED
        if transactional_id in self.pending or meta.state.preparing:
            return E.CONCURRENT_TRANSACTIONS
        return E.NONE

    def add_partitions(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        partitions: Iterable[TopicPartition],
        now_ms: int,
    ) -> Step:
        error = self._check(transactional_id, producer_id, epoch)
        if error is not E.NONE:
            return Step(error)
        meta = self.txns[transactional_id]
        wanted = frozenset(partitions)
        if meta.state is S.ONGOING and wanted <= meta.partitions:
            return Step()
        return self._begin(self._ongoing(meta, now_ms, partitions=meta.partitions | wanted))

    def add_group(
        self, transactional_id: str, producer_id: int, epoch: int, group_id: str, now_ms: int
    ) -> Step:
        error = self._check(transactional_id, producer_id, epoch)
        if error is not E.NONE:
            return Step(error)
        meta = self.txns[transactional_id]
        if meta.state is S.ONGOING and group_id in meta.groups:
            return Step()
        return self._begin(self._ongoing(meta, now_ms, groups=meta.groups | {group_id}))

    @staticmethod
    def _ongoing(meta: TxnMetadata, now_ms: int, **changes: object) -> TxnMetadata:
        start = meta.start_ms if meta.state is S.ONGOING else now_ms
        return replace(meta, state=S.ONGOING, start_ms=start, update_ms=now_ms, **changes)  # type: ignore[arg-type]

    def end_txn(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool, now_ms: int
    ) -> Step:
        if not transactional_id:
            return Step(E.INVALID_REQUEST)
        meta = self.txns.get(transactional_id)
        if meta is None or meta.producer_id != producer_id:
            return Step(E.INVALID_PRODUCER_ID_MAPPING)
        if meta.producer_epoch != epoch:
            return Step(E.PRODUCER_FENCED)
        if transactional_id in self.pending:
            return Step(E.CONCURRENT_TRANSACTIONS)
        state = meta.state
        if state is S.ONGOING:
            target = S.PREPARE_COMMIT if commit else S.PREPARE_ABORT
            return self._begin(replace(meta, state=target, update_ms=now_ms))
        if state is (S.COMPLETE_COMMIT if commit else S.COMPLETE_ABORT):
            return Step()
        if state is (S.PREPARE_COMMIT if commit else S.PREPARE_ABORT):
            return Step(E.CONCURRENT_TRANSACTIONS)
        return Step(E.INVALID_TXN_STATE)

    def complete_markers(self, transactional_id: str, now_ms: int) -> Step:
        """Every marker of a PrepareCommit/PrepareAbort transaction is written (and, on
        commit, its offsets applied): move to CompleteCommit/CompleteAbort."""
        meta = self.txns.get(transactional_id)
        if meta is None or not meta.state.preparing or transactional_id in self.pending:
            return Step(E.INVALID_TXN_STATE)
        done = S.COMPLETE_COMMIT if meta.state is S.PREPARE_COMMIT else S.COMPLETE_ABORT
        finished = replace(meta, last_producer_epoch=meta.producer_epoch)
        idle = self._idle(finished, done, meta.timeout_ms, now_ms)
        return self._begin(replace(idle, start_ms=meta.start_ms))  # kept, as Kafka does

    # ---- TxnOffsetCommit -------------------------------------------------------------------

    def check_offsets(
        self, transactional_id: str, producer_id: int, epoch: int, group_id: str
    ) -> ErrorCode:
        """May this producer commit offsets of ``group_id`` in its transaction now?"""
        error = self._check(transactional_id, producer_id, epoch)
        if error is not E.NONE:
            return error
        meta = self.txns[transactional_id]
        if meta.state is not S.ONGOING or group_id not in meta.groups:
            return E.INVALID_TXN_STATE
        return E.NONE

    def add_offsets(
        self, transactional_id: str, producer_id: int, epoch: int, offsets: Iterable[PendingOffset]
    ) -> ErrorCode:
        """Hold offsets now durable in the transaction log; re-checked, since the transaction
        may have ended while they were written (they are then ignored, here and on reload)."""
        offsets = list(offsets)
        group = offsets[0].group_id if offsets else ""
        error = self.check_offsets(transactional_id, producer_id, epoch, group)
        if error in (E.NONE, E.CONCURRENT_TRANSACTIONS) and self._may_hold(transactional_id):
            held = self.offsets.setdefault(transactional_id, {})
            for o in offsets:
                held[(o.group_id, o.topic, o.partition)] = o
            return E.NONE
        return error

    def _may_hold(self, transactional_id: str) -> bool:
        meta = self.txns.get(transactional_id)
        return meta is not None and meta.state is S.ONGOING

    def pending_offsets(self, transactional_id: str) -> list[PendingOffset]:
        return list(self.offsets.get(transactional_id, {}).values())

    def release_offsets(self, transactional_id: str) -> None:
        """The committed transaction's offsets are now the group's: stop holding them (the
        log keeps them until the Complete record, for a restart to apply them again)."""
        self.offsets.pop(transactional_id, None)

    def has_pending_offset(self, group_id: str, topic: str, partition: int) -> bool:
        """KIP-447: an offset of this partition awaits a transaction's outcome."""
        key = (group_id, topic, partition)
        return any(key in held for held in self.offsets.values())

    # ---- Produce ---------------------------------------------------------------------------

    def verify_produce(
        self, transactional_id: str, producer_id: int, epoch: int, topic: str, partition: int
    ) -> ErrorCode:
        """Transactional data may reach a partition only inside an ongoing transaction that
        added it (KIP-890 part 1): a late or zombie write can never open a transaction that
        no marker will close."""
        meta = self.txns.get(transactional_id)
        if meta is None or meta.producer_id != producer_id:
            return E.INVALID_PRODUCER_ID_MAPPING
        if meta.producer_epoch != epoch:
            return E.INVALID_PRODUCER_EPOCH
        if meta.state is not S.ONGOING or (topic, partition) not in meta.partitions:
            return E.INVALID_TXN_STATE
        return E.NONE

    # ---- time ------------------------------------------------------------------------------

    def timed_out(self, now_ms: int) -> list[Step]:
        """Abort, with an epoch bump, every ongoing transaction past its timeout."""
        steps = []
        for tid, meta in list(self.txns.items()):
            if (
                meta.state is S.ONGOING
                and tid not in self.pending
                and meta.start_ms + meta.timeout_ms < now_ms
            ):
                steps.append(self._begin(self._fence(meta, now_ms)))
        return steps

    def expired(self, now_ms: int) -> list[Step]:
        """Remove ids idle for ``transactional.id.expiration.ms``."""
        limit = self.config.id_expiration_ms
        steps = []
        for tid, meta in list(self.txns.items()):
            if meta.state.idle and tid not in self.pending and meta.update_ms + limit <= now_ms:
                steps.append(self._begin(replace(meta, state=S.DEAD, update_ms=now_ms)))
        return steps

    # ---- describing ------------------------------------------------------------------------

    def describe(self, transactional_id: str) -> TxnDescription | None:
        meta = self.txns.get(transactional_id)
        if meta is None:
            return None
        return TxnDescription(
            transactional_id,
            meta.producer_id,
            meta.producer_epoch,
            meta.state.value,
            meta.timeout_ms,
            meta.start_ms,
            meta.update_ms,
            tuple(sorted(meta.partitions)),
            tuple(sorted(meta.groups)),
            len(self.offsets.get(transactional_id, {})),
        )

    def list_transactions(
        self,
        states: Iterable[str] = (),
        producer_ids: Iterable[int] = (),
        min_duration_ms: int = -1,
        pattern: str | None = None,
        now_ms: int = 0,
    ) -> tuple[list[TxnDescription], list[str]]:
        """Descriptions matching every given filter (Kafka's ListTransactions) and the state
        filters that name no state. ``pattern`` is a full-match regular expression."""
        known = {s.value for s in TxnState if s is not S.DEAD}
        wanted_states = set(states)
        unknown = sorted(wanted_states - known)
        pids = set(producer_ids)
        regex = re.compile(pattern) if pattern else None
        found = []
        for tid in sorted(self.txns):
            meta = self.txns[tid]
            if wanted_states and meta.state.value not in wanted_states:
                continue
            if pids and meta.producer_id not in pids:
                continue
            if min_duration_ms >= 0 and now_ms - meta.start_ms <= min_duration_ms:
                continue
            if regex is not None and not regex.fullmatch(tid):
                continue
            description = self.describe(tid)
            assert description is not None
            found.append(description)
        return found, unknown


__all__ = [
    "NO_PRODUCER_ID",
    "Step",
    "TransactionCoordinator",
    "TxnConfig",
]
