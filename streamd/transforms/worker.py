"""One transform's worker process: ``python -m streamd.transforms.worker CONFIG.json``.

The broker's supervisor starts it with two Kafka connections to the broker (inherited socket
descriptors: one for Fetch, one for everything else) and a pipe for status lines; see
:mod:`streamd.transforms.supervisor`. The worker is an ordinary Kafka client of that broker:

1. Metadata of the input and output topics; ``InitProducerId`` with the transactional id
   ``streamd-transform-NAME`` (this fences a previous incarnation and aborts what it left
   open); the committed input positions of the group ``streamd-transform-NAME``
   (``OffsetFetch`` with ``require_stable``); partitions without one start at ``--from``.
2. Loop: Fetch (``read_committed``; the next Fetch is sent before the records of the last one
   are transformed, so the broker reads ahead while the worker works), transform every record
   into output batches; every ``commit_interval_ms`` (or ``commit_bytes`` of output) the
   batches and the input positions reached go to the committer thread, which writes and
   commits them in one transaction (:mod:`streamd.transforms.session`) while this thread
   transforms on. Output and progress are therefore atomic: after a crash anywhere (worker or
   broker), the restarted worker's InitProducerId aborts the open transaction and it resumes
   from the last committed positions, so ``read_committed`` readers of the output see every
   input record's output exactly once.

Failure handling, reported on the status pipe and by the exit code (the supervisor decides):
``EXIT_FAILED`` after ``--on-error stop`` committed everything before the bad record;
``EXIT_FATAL`` when the code cannot be loaded (restarting would not help); ``EXIT_MEMORY``
after a ``MemoryError`` (the address-space limit); any other non-zero code is a crash. The
per-record time limit and the heartbeats are the watchdog's (:mod:`streamd.transforms.process`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamd.transforms import wire
from streamd.transforms.process import StatusPipe, Watchdog, confine, die_with_parent
from streamd.transforms.runtime import Applier, Outputs, StopAt
from streamd.transforms.session import (
    READ_COMMITTED,
    Committer,
    Job,
    Session,
    WorkerError,
    error_name,
)

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_FAILED = 3
EXIT_FATAL = 4
EXIT_MEMORY = 5

E_NONE = 0
E_OFFSET_OUT_OF_RANGE = 1
EARLIEST, LATEST = -2, -1
METADATA_REFRESH_S = 30.0
STATUS_INTERVAL_S = 1.0
STATUS_AFTER_COMMIT_S = 0.2


@dataclass(kw_only=True)
class WorkerConfig:
    name: str
    input_topic: str
    output_topics: list[str]
    on_error: str
    dead_letter: str | None
    start: str
    code_path: str
    group_id: str
    transactional_id: str
    commit_interval_ms: int = 100
    commit_bytes: int = 8 << 20
    fetch_max_bytes: int = 16 << 20
    partition_fetch_bytes: int = 8 << 20
    fetch_max_wait_ms: int = 500
    record_timeout_ms: int = 10_000
    transaction_timeout_ms: int = 60_000
    fetch_fd: int = 3
    produce_fd: int = 4
    status_fd: int = 5
    extra: dict[str, Any] = field(default_factory=dict)


class Fatal(Exception):
    """The transform cannot run at all (its code does not load); do not restart it."""


def load_transform(path: str) -> Callable[[Any], Any]:
    spec = importlib.util.spec_from_file_location("streamd_user_transform", path)
    if spec is None or spec.loader is None:
        raise Fatal(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["streamd_user_transform"] = module
    try:
        spec.loader.exec_module(module)
    except MemoryError:
        raise
    except BaseException as exc:
        from streamd.transforms.runtime import describe

        raise Fatal(f"loading the transform failed: {describe(exc)}") from None
    fn = getattr(module, "transform", None)
    if not callable(fn):
        raise Fatal("the transform file does not define a callable transform(record)")
    return fn  # type: ignore[no-any-return]


class Worker:
    def __init__(self, cfg: WorkerConfig, fn: Callable[[Any], Any], status: StatusPipe) -> None:
        self.cfg = cfg
        self.status = status
        client_id = f"streamd-transform-{cfg.name}"
        self.fconn = wire.Connection(socket.socket(fileno=cfg.fetch_fd), client_id)
        self.session = Session(
            wire.Connection(socket.socket(fileno=cfg.produce_fd), client_id),
            group_id=cfg.group_id,
            transactional_id=cfg.transactional_id,
            input_topic=cfg.input_topic,
            transaction_timeout_ms=cfg.transaction_timeout_ms,
        )
        self.stopping = False
        self.out_topics = list(cfg.output_topics)
        if cfg.dead_letter is not None:
            self.out_topics.append(cfg.dead_letter)
        counts = self.session.metadata([cfg.input_topic, *self.out_topics])
        self.input_partitions = counts[cfg.input_topic]
        self.outputs = Outputs(self.out_topics, {t: counts[t] for t in self.out_topics})
        self.applier = Applier(
            fn,
            cfg.input_topic,
            self.out_topics,
            self.outputs,
            on_error=cfg.on_error,
            dead_letter=len(self.out_topics) - 1 if cfg.dead_letter is not None else None,
            report=self._record_error,
        )
        self.session.init_producer()
        self.positions: dict[int, int] = {}
        """Input partition -> next offset to transform (what the next job commits)."""
        self.fetch_positions: dict[int, int] = {}
        """Input partition -> next offset to fetch (ahead of ``positions`` while pipelining)."""
        self.submitted: dict[int, int] = {}
        """The positions of the last job handed to the committer."""
        self.committed: dict[int, int] = {}
        self.stable: dict[int, int] = {}
        """Input partition -> last stable offset seen in a Fetch (lag = stable - committed)."""
        self.caught_up = False
        self.txn_started = 0.0
        self.records_out = 0
        self.last_meta = time.monotonic()
        self.last_status = 0.0
        self.busy = {"fetch_wait": 0.0, "transform": 0.0, "commit_wait": 0.0}
        """Seconds this thread spent waiting for Fetch answers, transforming (decode,
        ``transform()``, encode) and waiting for the committer: where a slow transform's
        time goes."""
        self.committer: Committer | None = None
        self.report_soon = False

    # ---- positions -------------------------------------------------------------------------

    def start_positions(self, partitions: list[int], start: str) -> dict[int, int]:
        from streamd.transforms.spec import parse_from

        kind, value = parse_from(start)
        if kind == "earliest":
            return self.session.list_offsets(partitions, EARLIEST)
        if kind == "latest":
            return self.session.list_offsets(partitions, LATEST)
        if kind == "offset":
            return {p: value for p in partitions}
        found = self.session.list_offsets(partitions, value)
        missing = [p for p, off in found.items() if off < 0]
        if missing:
            found.update(self.session.list_offsets(missing, LATEST))
        return found

    def add_partitions(self, partitions: list[int]) -> None:
        """Start reading ``partitions``: at their committed positions, else at ``--from``
        (partitions added to the input topic later start at its earliest offset)."""
        committed = self.session.committed_positions(partitions)
        fresh = [p for p in partitions if p not in committed]
        start = self.cfg.start if not self.positions else "earliest"
        if fresh:
            committed.update(self.start_positions(fresh, start))
        for p in partitions:
            self.positions[p] = self.fetch_positions[p] = committed[p]
            self.committed[p] = self.submitted[p] = committed[p]

    def reset_positions(self, partitions: list[int]) -> None:
        """OFFSET_OUT_OF_RANGE: retention passed the position (continue at the earliest
        offset) or the position is past the end (continue at the latest)."""
        earliest = self.session.list_offsets(partitions, EARLIEST)
        latest = self.session.list_offsets(partitions, LATEST)
        for p in partitions:
            pos = self.fetch_positions[p]
            new = earliest[p] if pos < earliest[p] else latest[p]
            self.status.send("reset", partition=p, position=pos, to=new)
            self.fetch_positions[p] = self.positions[p] = new

    # ---- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        self.add_partitions(list(range(self.input_partitions)))
        self.committer = Committer(self.session, self.committed, self._committed)
        self.committer.start()
        self.status.send(
            "started",
            producer_id=self.session.producer_id,
            producer_epoch=self.session.producer_epoch,
            positions=_keyed(self.positions),
        )
        self.send_fetch()
        clock = time.monotonic
        busy = self.busy
        while True:
            t0 = clock()
            resp = self.fconn.receive()
            t1 = clock()
            batches = self.parse_fetch(resp)
            if not self.stopping:
                self.send_fetch(more=bool(batches))
            self.transform(batches)
            t2 = clock()
            busy["fetch_wait"] += t1 - t0
            busy["transform"] += t2 - t1
            if self.stopping:
                self.commit(wait=True)
                break
            if self.commit_due():
                self.commit()
                busy["commit_wait"] += clock() - t2
            self.housekeeping()
        self.report(force=True)

    def send_fetch(self, more: bool = False) -> None:
        """``more``: records are about to be transformed, so a transaction will be open: the
        Fetch must not hold its answer past the commit interval."""
        f = self.session.schema("Fetch")
        cfg = self.cfg
        wait = cfg.fetch_max_wait_ms
        if self.txn_started:
            left = cfg.commit_interval_ms - (time.monotonic() - self.txn_started) * 1000
            wait = max(0, min(wait, int(left)))
        elif more or self.dirty():
            wait = min(wait, cfg.commit_interval_ms)
        self.fconn.send(
            "Fetch",
            f.FetchRequest(
                replica_id=-1,
                max_wait=wire.millis(wait),
                min_bytes=1,
                max_bytes=cfg.fetch_max_bytes,
                isolation_level=READ_COMMITTED,
                session_id=0,
                session_epoch=-1,
                topics=(
                    f.FetchTopic(
                        topic=cfg.input_topic,
                        partitions=tuple(
                            f.FetchPartition(
                                partition=p,
                                current_leader_epoch=-1,
                                fetch_offset=off,
                                log_start_offset=-1,
                                partition_max_bytes=cfg.partition_fetch_bytes,
                            )
                            for p, off in sorted(self.fetch_positions.items())
                        ),
                    ),
                ),
                forgotten_topics_data=(),
                rack_id="",
            ),
        )

    def parse_fetch(self, resp: Any) -> list[tuple[int, list[Any]]]:
        """The data batches of a Fetch response per partition, with control batches and
        aborted transactions' batches left out (as a read_committed consumer does); moves the
        fetch positions past everything returned."""
        from aiokafka.record.memory_records import MemoryRecords

        if resp.error_code != E_NONE:
            raise WorkerError(f"Fetch: {error_name(resp.error_code)}")
        out = []
        reset = []
        for t in resp.responses:
            for pd in t.partitions:
                p = int(pd.partition_index)
                if pd.error_code == E_OFFSET_OUT_OF_RANGE:
                    reset.append(p)
                    continue
                if pd.error_code != E_NONE:
                    raise WorkerError(f"Fetch partition {p}: {error_name(pd.error_code)}")
                stable = pd.last_stable_offset if pd.last_stable_offset >= 0 else pd.high_watermark
                self.stable[p] = int(stable)
                if not pd.records:
                    continue
                aborted = sorted(
                    (a.first_offset, a.producer_id) for a in (pd.aborted_transactions or ())
                )
                aborted_ids: set[int] = set()
                keep: list[tuple[Any, int]] = []
                records = MemoryRecords(pd.records)
                next_offset = self.fetch_positions[p]
                while True:
                    batch = records.next_batch()
                    if batch is None:
                        break
                    last = batch.next_offset - 1
                    if last < next_offset:
                        continue
                    if batch.is_transactional:
                        while aborted and aborted[0][0] <= last:
                            aborted_ids.add(aborted.pop(0)[1])
                    if batch.is_control_batch:
                        if batch.producer_id in aborted_ids and _is_abort_marker(batch):
                            aborted_ids.discard(batch.producer_id)
                        keep.append((None, batch.next_offset))
                    elif batch.is_transactional and batch.producer_id in aborted_ids:
                        keep.append((None, batch.next_offset))
                    elif batch.base_offset < next_offset:
                        # The batch holding the fetch offset comes whole (a restart inside a
                        # batch, after --on-error stop): only its records from there on count.
                        start = next_offset
                        keep.append(([r for r in batch if r.offset >= start], batch.next_offset))
                    else:
                        keep.append((batch, batch.next_offset))
                    next_offset = batch.next_offset
                self.fetch_positions[p] = next_offset
                if keep:
                    out.append((p, keep))
        if reset:
            self.reset_positions(reset)
        return out

    def transform(self, batches: list[tuple[int, list[Any]]]) -> None:
        apply = self.applier.apply
        positions = self.positions
        for p, items in batches:
            for batch, next_offset in items:
                if batch is not None:
                    if self.txn_started == 0.0:
                        self.txn_started = time.monotonic()
                    try:
                        apply(p, batch)
                    except StopAt as stop:
                        positions[stop.partition] = stop.offset
                        self.commit(wait=True)
                        raise
                positions[p] = next_offset
                if batch is not None and self.commit_due():
                    # One Fetch answer can hold a whole archived object (thousands of
                    # records): commit at batch boundaries inside it too, so the commit
                    # interval holds however large the answers are.
                    self.commit()
        if self.txn_started == 0.0 and self.dirty():
            self.txn_started = time.monotonic()

    def housekeeping(self) -> None:
        now = time.monotonic()
        if now - self.last_meta >= METADATA_REFRESH_S and not self.dirty():
            self.last_meta = now
            counts = self.session.metadata([self.cfg.input_topic, *self.out_topics])
            self.outputs.set_partition_counts({t: counts[t] for t in self.out_topics})
            grown = counts[self.cfg.input_topic]
            if grown > self.input_partitions:
                assert self.committer is not None
                self.committer.flush()
                new = list(range(self.input_partitions, grown))
                self.input_partitions = grown
                self.add_partitions(new)
                self.committer.committed.update({p: self.committed[p] for p in new})
        if not self.caught_up and all(
            self.positions.get(p, 0) >= self.stable.get(p, 1 << 62) for p in self.positions
        ):
            self.caught_up = True
        soon = self.report_soon and time.monotonic() - self.last_status >= STATUS_AFTER_COMMIT_S
        self.report(force=soon)

    # ---- commits ---------------------------------------------------------------------------

    def dirty(self) -> bool:
        """Output or positions not yet handed to the committer."""
        return bool(self.outputs.parts) or self.positions != self.submitted

    def commit_due(self) -> bool:
        if not self.dirty():
            return False
        if (time.monotonic() - self.txn_started) * 1000 >= self.cfg.commit_interval_ms:
            return True
        return self.outputs.pending_bytes() >= self.cfg.commit_bytes

    def commit(self, wait: bool = False) -> None:
        """Hand the output built so far and the positions reached to the committer (one
        transaction); with ``wait``, return once everything handed over is committed."""
        assert self.committer is not None
        if self.dirty():
            positions = dict(self.positions)
            job = Job(self.outputs.take(), positions, self.outputs.records)
            self.outputs.records = 0
            self.committer.submit(job)
            self.submitted = positions
            self.txn_started = 0.0
        if wait:
            self.committer.flush()

    def _committed(self, job: Job) -> None:
        """On the committer thread, after a transaction committed (the main thread reports
        it: only it reads the other counters)."""
        self.records_out += job.records
        self.committed = job.positions
        self.report_soon = True

    # ---- reporting -------------------------------------------------------------------------

    def _record_error(self, error: Any) -> None:
        self.status.send(
            "record_error",
            partition=error.partition,
            offset=error.offset,
            error=error.error,
            action=error.action,
        )
        print(
            f"record {self.cfg.input_topic}[{error.partition}]@{error.offset}: {error.error} "
            f"({error.action})",
            file=sys.stderr,
            flush=True,
        )

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_status < STATUS_INTERVAL_S:
            return
        self.last_status = now
        self.report_soon = False
        a = self.applier
        self.status.send(
            "status",
            committed=_keyed(self.committed),
            stable=_keyed(self.stable),
            records_in=a.records_in,
            records_out=self.records_out,
            skipped=a.skipped,
            dead_lettered=a.dead_lettered,
            caught_up=self.caught_up,
            seconds={k: round(v, 3) for k, v in self.busy.items()},
        )


def _keyed(d: dict[int, int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(d.items())}


def _is_abort_marker(batch: Any) -> bool:
    """A control record's key is (version int16, type int16); type 0 is ABORT."""
    for rec in batch:
        key = rec.key
        return bool(key is not None and len(key) >= 4 and key[2:4] == b"\x00\x00")
    return False


def main(argv: list[str]) -> int:
    die_with_parent()
    with open(argv[1]) as f:
        cfg = WorkerConfig(**json.load(f))
    confine(cfg.extra)
    status = StatusPipe(cfg.status_fd)
    workers: list[Worker] = []

    def on_term(signum: int, frame: Any) -> None:
        for w in workers:
            w.stopping = True
        if not workers:
            raise SystemExit(EXIT_OK)

    signal.signal(signal.SIGTERM, on_term)
    watchdog = Watchdog(status, cfg.record_timeout_ms / 1000)
    watchdog.install()
    watchdog.start()
    try:
        fn = load_transform(cfg.code_path)
        worker = Worker(cfg, fn, status)
        workers.append(worker)
        watchdog.applier = worker.applier
        worker.run()
        return EXIT_OK
    except Fatal as exc:
        status.send("fatal", error=str(exc))
        print(str(exc), file=sys.stderr, flush=True)
        return EXIT_FATAL
    except StopAt as stop:
        status.send("failed", partition=stop.partition, offset=stop.offset, error=stop.error)
        print(f"stopped: {stop}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except MemoryError:
        status.send("memory", error="the worker ran out of memory (transforms.memory_limit_bytes)")
        return EXIT_MEMORY
    except WorkerError as exc:
        status.send("crash", error=str(exc))
        print(f"worker error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CRASH
    except ConnectionError as exc:
        status.send("crash", error=f"broker connection lost: {exc}")
        return EXIT_CRASH


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
