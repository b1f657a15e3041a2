"""The worker's commit interval holds inside one large Fetch answer.

A Fetch answer served from the bucket can hold a whole archived object, thousands of records
in many batches. The worker used to commit only between answers, so the first transaction of a
replay could hold everything and nothing was committed until all of it was transformed. No
sockets: ``transform`` runs on a worker built without ``__init__``, with a committer that
records the jobs it is handed."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from streamd.transforms.worker import Worker


class _Outputs:
    def __init__(self) -> None:
        self.parts: list[int] = []
        self.records = 0

    def pending_bytes(self) -> int:
        return 0

    def take(self) -> list[int]:
        taken, self.parts = self.parts, []
        return taken


def _worker(batch_seconds: float, interval_ms: int) -> tuple[Worker, list[Any]]:
    jobs: list[Any] = []
    w = Worker.__new__(Worker)
    outputs = _Outputs()

    def apply(partition: int, batch: Any) -> None:
        time.sleep(batch_seconds)
        outputs.parts.append(batch)
        outputs.records += 1

    w.cfg = SimpleNamespace(commit_interval_ms=interval_ms, commit_bytes=1 << 40)
    w.applier = SimpleNamespace(apply=apply)
    w.outputs = outputs
    w.positions = {0: 0}
    w.submitted = {0: 0}
    w.txn_started = 0.0
    w.committer = SimpleNamespace(submit=jobs.append, flush=lambda: None)
    return w, jobs


def test_a_long_answer_is_committed_in_several_transactions() -> None:
    w, jobs = _worker(batch_seconds=0.03, interval_ms=50)
    batches = [(0, [(f"batch-{n}", 10 * (n + 1)) for n in range(10)])]
    w.transform(batches)
    assert len(jobs) >= 2, "one answer of 10 batches (300 ms) became a single transaction"
    done = [j.positions[0] for j in jobs]
    assert done == sorted(done) and all(p % 10 == 0 for p in done)
    # Each job's output is exactly the batches its positions cover.
    seen = [b for j in jobs for b in j.batches]
    assert seen == [f"batch-{n}" for n in range(done[-1] // 10)]
