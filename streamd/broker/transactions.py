"""Wiring of the transaction coordinator: what it needs from the logs and the group coordinator.

The coordinator (:mod:`streamd.txn`) sits beside the group coordinator and cannot import it or
the log manager's Kafka-side helpers; the broker hands it these two adapters instead:

- :class:`LogMarkers` appends markers to partition logs and wakes the long-polling fetches of
  the partition (a marker moves its last stable offset);
- :class:`GroupTxnOffsets` checks TxnOffsetCommit members and applies committed offsets through
  the :class:`GroupService`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamd.errors import ErrorCode
from streamd.groups.coordinator import CommitOffset
from streamd.groups.service import GroupService
from streamd.kafka.context import AppendWaiters
from streamd.log.manager import LogManager
from streamd.log.producer_ids import ProducerIdAllocator
from streamd.txn.coordinator import TxnConfig
from streamd.txn.model import PendingOffset, TxnDescription
from streamd.txn.service import TransactionService


class LogMarkers:
    def __init__(self, logs: LogManager, waiters: AppendWaiters) -> None:
        self.logs = logs
        self.waiters = waiters

    async def write_marker(
        self, topic: str, partition: int, producer_id: int, producer_epoch: int, commit: bool
    ) -> bool:
        t = self.logs.get(topic)
        if t is None or not 0 <= partition < len(t.partitions):
            return False
        plog = t.partitions[partition]
        await plog.append_marker(
            producer_id, producer_epoch, commit, now_ms=int(time.time() * 1000)
        )
        self.waiters.notify(topic, partition)
        return True

    def open_transactions(self) -> list[tuple[str, int, int, int]]:
        found = []
        for name, topic in self.logs.topics().items():
            for index, plog in enumerate(topic.partitions):
                producers = plog.producers
                for pid in producers.ongoing:
                    entry = producers.producers.get(pid)
                    found.append((name, index, pid, entry.epoch if entry is not None else 0))
        return found


class GroupTxnOffsets:
    def __init__(self, groups: GroupService) -> None:
        self.groups = groups

    def validate_txn_commit(
        self, group_id: str, generation: int, member_id: str, instance_id: str | None
    ) -> ErrorCode:
        return self.groups.validate_txn_commit(group_id, generation, member_id, instance_id)

    async def commit_txn_offsets(self, group_id: str, offsets: list[PendingOffset]) -> None:
        await self.groups.commit_txn_offsets(
            group_id,
            [CommitOffset(o.topic, o.partition, o.offset, o.leader_epoch, o.metadata)
             for o in offsets],
        )


def transaction_service(
    data_dir: Path,
    values: Mapping[str, Any],
    allocator: ProducerIdAllocator,
    logs: LogManager,
    waiters: AppendWaiters,
    groups: GroupService,
) -> TransactionService:
    return TransactionService(
        data_dir,
        TxnConfig(
            max_timeout_ms=int(values["transaction.max.timeout.ms"]),
            id_expiration_ms=int(values["transactional.id.expiration.ms"]),
        ),
        allocator.allocate,
        LogMarkers(logs, waiters),
        GroupTxnOffsets(groups),
        abort_interval_ms=int(
            values["transaction.abort.timed.out.transaction.cleanup.interval.ms"]
        ),
        expiration_interval_ms=int(
            values["transaction.remove.expired.transaction.cleanup.interval.ms"]
        ),
        exit_after_markers=int(values["transaction.debug.exit_after_markers"]),
    )


def describe_json(d: TxnDescription, now_ms: int) -> dict[str, Any]:
    """One transactional id as the admin API (``/v1/transactions``) shows it."""
    return {
        "transactional_id": d.transactional_id,
        "producer_id": d.producer_id,
        "producer_epoch": d.producer_epoch,
        "state": d.state,
        "timeout_ms": d.timeout_ms,
        "start_ms": d.start_ms,
        "duration_ms": now_ms - d.start_ms if d.state == "Ongoing" else None,
        "last_update_ms": d.update_ms,
        "partitions": [{"topic": t, "partition": p} for t, p in d.partitions],
        "groups": list(d.groups),
        "pending_offsets": d.pending_offsets,
    }


def transactions_json(txn: TransactionService, states: list[str]) -> dict[str, Any]:
    now = int(time.time() * 1000)
    found, unknown = txn.list_transactions(states=states)
    if unknown:
        raise ValueError(f"unknown state {unknown[0]!r}")
    return {"transactions": [describe_json(d, now) for d in found]}
