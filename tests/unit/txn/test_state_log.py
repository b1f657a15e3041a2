"""The transaction state log: framing, torn tails, offset records, compaction."""

from __future__ import annotations

from pathlib import Path

from streamd.txn.model import PendingOffset, TxnMetadata, TxnState
from streamd.txn.state_log import OffsetsRecord, TxnStateLog

S = TxnState


def meta(state: TxnState, epoch: int = 0, tid: str = "t", **kw: object) -> TxnMetadata:
    return TxnMetadata(
        transactional_id=tid, producer_id=7, producer_epoch=epoch, timeout_ms=1000, state=state,
        **kw,  # type: ignore[arg-type]
    )


def test_last_record_wins_and_dead_removes(tmp_path: Path) -> None:
    log = TxnStateLog(tmp_path)
    log.load()
    ongoing = meta(S.ONGOING, partitions=frozenset({("a", 0)}), groups=frozenset({"g"}))
    log.append([meta(S.EMPTY), ongoing, meta(S.EMPTY, tid="gone"), meta(S.DEAD, tid="gone")])
    log.close()
    snapshot = TxnStateLog(tmp_path).load()
    assert snapshot.txns == {"t": ongoing}


def test_torn_tail_is_cut_and_later_appends_follow_valid_data(tmp_path: Path) -> None:
    log = TxnStateLog(tmp_path)
    log.load()
    log.append([meta(S.EMPTY)])
    log.close()
    with (tmp_path / "state.log").open("ab") as f:
        f.write(b"\x00\x00\x01\x00garbage")
    again = TxnStateLog(tmp_path)
    assert again.load().txns["t"].state is S.EMPTY
    again.append([meta(S.ONGOING)])
    again.close()
    assert TxnStateLog(tmp_path).load().txns["t"].state is S.ONGOING


def test_offsets_count_only_inside_their_ongoing_transaction(tmp_path: Path) -> None:
    held = (PendingOffset("g", "in", 0, 5),)
    log = TxnStateLog(tmp_path)
    log.load()
    log.append(
        [
            meta(S.ONGOING),
            OffsetsRecord("t", 7, 0, held),
            OffsetsRecord("t", 7, 1, (PendingOffset("g", "in", 1, 9),)),  # other epoch: ignored
            meta(S.PREPARE_COMMIT),
            OffsetsRecord("t", 7, 0, (PendingOffset("g", "in", 2, 9),)),  # after the decision
        ]
    )
    log.close()
    snapshot = TxnStateLog(tmp_path).load()
    assert snapshot.offsets == {"t": list(held)}
    log = TxnStateLog(tmp_path)
    log.load()
    log.append([meta(S.COMPLETE_COMMIT)])
    log.close()
    assert TxnStateLog(tmp_path).load().offsets == {}


def test_rewrite_keeps_live_state_only(tmp_path: Path) -> None:
    log = TxnStateLog(tmp_path)
    log.load()
    for epoch in range(50):
        log.append([meta(S.EMPTY, epoch=epoch)], sync=False)
    held = OffsetsRecord("t", 7, 50, (PendingOffset("g", "x", 0, 1),))
    log.append([meta(S.ONGOING, epoch=50), held])
    snapshot = TxnStateLog(tmp_path).load()
    log.rewrite(snapshot)
    assert log.records == 2
    log.close()
    again = TxnStateLog(tmp_path).load()
    assert again.txns == snapshot.txns and again.offsets == snapshot.offsets
