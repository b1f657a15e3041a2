"""The transaction coordinator state machine, driven by hand (no sockets, no clock, no disk)."""

from __future__ import annotations

import itertools

from streamd.errors import ErrorCode as E
from streamd.txn.coordinator import Step, TransactionCoordinator, TxnConfig
from streamd.txn.model import PendingOffset, TxnMetadata, TxnState

S = TxnState


def coordinator(**config: int) -> TransactionCoordinator:
    ids = itertools.count(1000)
    return TransactionCoordinator(TxnConfig(**config), lambda: next(ids))


def done(c: TransactionCoordinator, step: Step) -> TxnMetadata:
    """Pretend the transition was made durable."""
    assert step.error is E.NONE and step.target is not None, step
    c.complete(step.target)
    return step.target


def init(c: TransactionCoordinator, tid: str = "t", now: int = 0, **kw: object) -> TxnMetadata:
    return done(c, c.init_producer_id(tid, 60_000, kw.get("expected"), now))  # type: ignore[arg-type]


def test_new_id_gets_a_producer_and_epoch_zero_then_bumps() -> None:
    c = coordinator()
    first = init(c)
    assert (first.producer_id, first.producer_epoch, first.state) == (1000, 0, S.EMPTY)
    second = init(c)
    assert (second.producer_id, second.producer_epoch) == (1000, 1)


def test_invalid_requests() -> None:
    c = coordinator(max_timeout_ms=1000)
    assert c.init_producer_id("", 100, None, 0).error is E.INVALID_REQUEST
    assert c.init_producer_id("t", 1001, None, 0).error is E.INVALID_TRANSACTION_TIMEOUT
    assert c.add_partitions("nope", 1, 0, [("a", 0)], 0).error is E.INVALID_PRODUCER_ID_MAPPING
    m = done(c, c.init_producer_id("t", 1000, None, 0))
    assert c.add_partitions("t", m.producer_id + 1, 0, [("a", 0)], 0).error is (
        E.INVALID_PRODUCER_ID_MAPPING
    )
    assert c.end_txn("t", m.producer_id, 0, True, 0).error is E.INVALID_TXN_STATE  # Empty


def test_commit_path_and_retries() -> None:
    c = coordinator()
    m = init(c)
    pid, epoch = m.producer_id, m.producer_epoch
    ongoing = done(c, c.add_partitions("t", pid, epoch, [("a", 0), ("b", 1)], now_ms=5))
    assert ongoing.state is S.ONGOING and ongoing.start_ms == 5
    assert c.add_partitions("t", pid, epoch, [("a", 0)], 9) == Step()  # already in: no write
    assert c.verify_produce("t", pid, epoch, "a", 0) is E.NONE
    assert c.verify_produce("t", pid, epoch, "c", 0) is E.INVALID_TXN_STATE
    prepare = done(c, c.end_txn("t", pid, epoch, True, 10))
    assert prepare.state is S.PREPARE_COMMIT
    assert c.end_txn("t", pid, epoch, True, 11).error is E.CONCURRENT_TRANSACTIONS
    assert c.end_txn("t", pid, epoch, False, 11).error is E.INVALID_TXN_STATE
    assert c.add_partitions("t", pid, epoch, [("a", 0)], 11).error is E.CONCURRENT_TRANSACTIONS
    assert c.verify_produce("t", pid, epoch, "a", 0) is E.INVALID_TXN_STATE
    complete = done(c, c.complete_markers("t", 12))
    assert complete.state is S.COMPLETE_COMMIT and not complete.partitions
    assert c.end_txn("t", pid, epoch, True, 13) == Step()  # a retried commit: NONE
    assert c.end_txn("t", pid, epoch, False, 13).error is E.INVALID_TXN_STATE


def test_pending_transition_blocks_other_requests_until_complete() -> None:
    c = coordinator()
    m = init(c)
    step = c.add_partitions("t", m.producer_id, 0, [("a", 0)], 1)
    assert step.target is not None
    assert c.end_txn("t", m.producer_id, 0, True, 2).error is E.CONCURRENT_TRANSACTIONS
    assert c.init_producer_id("t", 1000, None, 2).error is E.CONCURRENT_TRANSACTIONS
    assert c.verify_produce("t", m.producer_id, 0, "a", 0) is E.INVALID_TXN_STATE  # not yet
    c.abandon("t")  # the write failed: nothing changed
    assert c.txns["t"].state is S.EMPTY
    done(c, c.add_partitions("t", m.producer_id, 0, [("a", 0)], 3))
    assert c.verify_produce("t", m.producer_id, 0, "a", 0) is E.NONE


def test_new_producer_fences_an_ongoing_transaction() -> None:
    c = coordinator()
    old = init(c)
    done(c, c.add_partitions("t", old.producer_id, 0, [("a", 0)], 1))
    step = c.init_producer_id("t", 60_000, None, 2)
    assert step.fenced and step.target is not None
    fenced = done(c, step)
    assert (fenced.state, fenced.producer_epoch) == (S.PREPARE_ABORT, 1)
    assert c.verify_produce("t", old.producer_id, 0, "a", 0) is E.INVALID_PRODUCER_EPOCH
    assert c.end_txn("t", old.producer_id, 0, True, 3).error is E.PRODUCER_FENCED
    assert c.init_producer_id("t", 60_000, None, 3).error is E.CONCURRENT_TRANSACTIONS
    done(c, c.complete_markers("t", 4))
    new = init(c, now=5)
    assert (new.producer_id, new.producer_epoch) == (old.producer_id, 2)
    assert c.add_partitions("t", old.producer_id, 0, [("a", 0)], 6).error is E.PRODUCER_FENCED


def test_kip360_init_with_current_epoch_and_retry_and_zombie() -> None:
    c = coordinator()
    m = init(c)
    bumped = init(c, expected=(m.producer_id, 0))
    assert (bumped.producer_epoch, bumped.last_producer_epoch) == (1, 0)
    retry = init(c, expected=(m.producer_id, 0))  # the answer was lost: same epoch again
    assert retry.producer_epoch == 1
    zombie = c.init_producer_id("t", 60_000, (m.producer_id + 7, 0), 1)
    assert zombie.error is E.PRODUCER_FENCED


def test_exhausted_epoch_rotates_the_producer_id() -> None:
    c = coordinator()
    m = init(c)
    c.txns["t"] = TxnMetadata(
        transactional_id="t", producer_id=m.producer_id, producer_epoch=32766, timeout_ms=1000
    )
    rotated = init(c, expected=(m.producer_id, 32766))
    assert rotated.producer_id != m.producer_id and rotated.producer_epoch == 0
    assert rotated.previous_producer_id == m.producer_id


def test_timeout_aborts_with_an_epoch_bump() -> None:
    c = coordinator()
    m = init(c)
    done(c, c.add_partitions("t", m.producer_id, 0, [("a", 0)], now_ms=100))
    assert c.timed_out(100 + 60_000) == []  # not yet: strictly older than the timeout
    (step,) = c.timed_out(100 + 60_001)
    target = done(c, step)
    assert (target.state, target.producer_epoch) == (S.PREPARE_ABORT, 1)
    assert c.end_txn("t", m.producer_id, 0, True, 0).error is E.PRODUCER_FENCED


def test_offsets_are_held_until_commit_and_dropped_on_abort() -> None:
    c = coordinator()
    m = init(c)
    pid = m.producer_id
    assert c.check_offsets("t", pid, 0, "g") is E.INVALID_TXN_STATE  # AddOffsetsToTxn first
    done(c, c.add_group("t", pid, 0, "g", 1))
    offsets = [PendingOffset("g", "in", 0, 42)]
    assert c.add_offsets("t", pid, 0, offsets) is E.NONE
    assert c.has_pending_offset("g", "in", 0) and not c.has_pending_offset("g", "in", 1)
    done(c, c.end_txn("t", pid, 0, False, 2))
    assert c.pending_offsets("t") == offsets  # still held while the abort completes
    done(c, c.complete_markers("t", 3))
    assert c.pending_offsets("t") == [] and not c.has_pending_offset("g", "in", 0)
    assert c.add_offsets("t", pid, 0, offsets) is E.INVALID_TXN_STATE


def test_expiration_removes_idle_ids_only() -> None:
    c = coordinator(id_expiration_ms=1000)
    init(c, "idle", now=0)
    m = init(c, "busy", now=0)
    done(c, c.add_partitions("busy", m.producer_id, 0, [("a", 0)], 0))
    steps = c.expired(1000)
    assert [s.target.transactional_id for s in steps if s.target] == ["idle"]
    for s in steps:
        done(c, s)
    assert set(c.txns) == {"busy"}


def test_list_and_describe() -> None:
    c = coordinator()
    a = init(c, "a")
    init(c, "b")
    done(c, c.add_partitions("a", a.producer_id, 0, [("x", 1)], now_ms=10))
    d = c.describe("a")
    assert d is not None and d.state == "Ongoing" and d.partitions == (("x", 1),)
    found, unknown = c.list_transactions(states=["Ongoing", "Bogus"])
    assert [f.transactional_id for f in found] == ["a"] and unknown == ["Bogus"]
    found, _ = c.list_transactions(pattern="b.*")
    assert [f.transactional_id for f in found] == ["b"]
    found, _ = c.list_transactions(min_duration_ms=100, now_ms=200)
    assert "a" in [f.transactional_id for f in found]
    found, _ = c.list_transactions(states=["Ongoing"], min_duration_ms=500, now_ms=200)
    assert found == []
