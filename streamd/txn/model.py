"""Transaction metadata: one frozen value per transactional id; transitions build new values.

States and transitions are Kafka's (``TransactionMetadata``)::

    Empty | CompleteCommit | CompleteAbort --AddPartitions/AddOffsets--> Ongoing
    Ongoing --EndTxn(commit)--> PrepareCommit --markers written--> CompleteCommit
    Ongoing --EndTxn(abort), timeout, new producer--> PrepareAbort --markers--> CompleteAbort
    Empty | CompleteCommit | CompleteAbort --expiration--> Dead (removed)

``PrepareEpochFence`` is never stored: fencing an ongoing transaction goes straight to
PrepareAbort with the bumped epoch. Epoch fields follow KIP-360: ``last_producer_epoch`` is the
epoch before the latest bump (a retried InitProducerId is recognised by it) and
``previous_producer_id`` the id before a rotation (epoch exhausted).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NO_PRODUCER_ID = -1
NO_EPOCH = -1
MAX_EPOCH = 32767

TopicPartition = tuple[str, int]


def epoch_exhausted(epoch: int) -> bool:
    """Kafka never hands out 32767, so that a producer at 32766 can still be fenced."""
    return epoch >= MAX_EPOCH - 1


class TxnState(enum.Enum):
    EMPTY = "Empty"
    ONGOING = "Ongoing"
    PREPARE_COMMIT = "PrepareCommit"
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"
    DEAD = "Dead"

    @property
    def preparing(self) -> bool:
        return self in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT)

    @property
    def idle(self) -> bool:
        """No transaction in progress: a new one may begin, the id may expire."""
        return self in (TxnState.EMPTY, TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT)


@dataclass(frozen=True, slots=True)
class PendingOffset:
    """An offset committed inside a transaction: applied to the group only on commit."""

    group_id: str
    topic: str
    partition: int
    offset: int
    leader_epoch: int = -1
    metadata: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TxnMetadata:
    transactional_id: str
    producer_id: int
    producer_epoch: int = NO_EPOCH
    last_producer_epoch: int = NO_EPOCH
    previous_producer_id: int = NO_PRODUCER_ID
    timeout_ms: int
    state: TxnState = TxnState.EMPTY
    partitions: frozenset[TopicPartition] = field(default_factory=frozenset)
    groups: frozenset[str] = field(default_factory=frozenset)
    """Groups added with AddOffsetsToTxn: their TxnOffsetCommits belong to this transaction."""
    start_ms: int = -1
    """When the current transaction began (first partition or group added); -1 if none."""
    update_ms: int = 0


@dataclass(frozen=True, slots=True)
class TxnDescription:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    state: str
    timeout_ms: int
    start_ms: int
    update_ms: int
    partitions: tuple[TopicPartition, ...]
    groups: tuple[str, ...]
    pending_offsets: int
