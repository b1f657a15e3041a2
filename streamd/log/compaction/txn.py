"""Transactions as the cleaner sees them (Kafka's ``CleanedTransactionMetadata``), sans-IO.

The cleaner only works below the last stable offset, so every transaction whose batches it
reads has been decided. Fed the aborted transactions (from the segments' transaction indexes)
and the batches in log order, this decides:

- a data batch of an aborted transaction is discarded (its records never enter the key map,
  and cleaning drops the batch);
- an ABORT marker is kept while this pass still saw batches of its transaction (they are being
  removed now) and its aborted-transaction entry is re-indexed in the cleaned segment; once no
  data of the transaction is left the marker is discardable;
- a COMMIT marker is discardable when this pass saw no batch of its transaction;
- an empty control batch (already cleaned) is discardable.

"Discardable" markers are then kept until their delete horizon has passed (see
:mod:`streamd.log.compaction.filter`), like tombstones, so a consumer that is reading the
transaction still meets its marker.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["ABORT", "COMMIT", "AbortedTxn", "TxnTracker"]

from streamd.log.batch import TRANSACTIONAL, BatchHeader
from streamd.log.txn_index import AbortedTxn

ABORT = 0
COMMIT = 1


@dataclass(slots=True)
class _Ongoing:
    txn: AbortedTxn
    last_observed_batch: int | None = None


@dataclass
class TxnTracker:
    _pending: list[tuple[int, int, AbortedTxn]] = field(default_factory=list)
    _aborted: dict[int, _Ongoing] = field(default_factory=dict)
    _committed: set[int] = field(default_factory=set)
    retained_aborts: list[AbortedTxn] = field(default_factory=list)
    """ABORT markers kept by this pass whose entries belong in the cleaned transaction index."""

    def add_aborted(self, txns: Iterable[AbortedTxn]) -> None:
        for txn in txns:
            heapq.heappush(self._pending, (txn.first_offset, txn.last_offset, txn))

    def _consume_up_to(self, offset: int) -> None:
        pending = self._pending
        while pending and pending[0][0] <= offset:
            txn = heapq.heappop(pending)[2]
            self._aborted.setdefault(txn.producer_id, _Ongoing(txn))

    def on_data(self, header: BatchHeader) -> bool:
        """A data batch was read; True when it belongs to an aborted transaction."""
        self._consume_up_to(header.last_offset)
        if not header.attributes & TRANSACTIONAL:
            return False
        ongoing = self._aborted.get(header.producer_id)
        if ongoing is not None:
            ongoing.last_observed_batch = header.last_offset
            return True
        self._committed.add(header.producer_id)
        return False

    def on_control(self, header: BatchHeader, kind: int | None) -> bool:
        """A control batch was read (``kind`` None: it has no record left); True when the
        marker may be discarded (still subject to its delete horizon)."""
        self._consume_up_to(header.last_offset)
        if kind is None:
            return True
        pid = header.producer_id
        if kind == ABORT:
            ongoing = self._aborted.pop(pid, None)
            if ongoing is not None and ongoing.last_observed_batch is not None:
                self.retained_aborts.append(ongoing.txn)
                return False
            return True
        if kind == COMMIT:
            if pid in self._committed:
                self._committed.discard(pid)
                return False
            return True
        return False
