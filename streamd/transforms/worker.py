"""One transform's worker process: ``python -m streamd.transforms.worker CONFIG.json``.

The broker's supervisor starts it with two Kafka connections to the broker (inherited socket
descriptors: one for Fetch, one for Produce and the transaction APIs) and a pipe for status
lines; see :mod:`streamd.transforms.supervisor`. The worker is an ordinary Kafka client of
that broker:

1. Metadata of the input and output topics; ``InitProducerId`` with the transactional id
   ``streamd-transform-NAME`` (this fences a previous incarnation and aborts what it left
   open); the committed input positions of the group ``streamd-transform-NAME``
   (``OffsetFetch`` with ``require_stable``); partitions without one start at ``--from``.
2. Loop: Fetch (``read_committed``; the next Fetch is sent before the records of the last one
   are transformed, so the broker reads ahead while the worker works), transform every record,
   build output batches; every ``commit_interval_ms`` (or ``commit_bytes`` of output) one
   transaction commits the output batches *and* the input positions: AddPartitionsToTxn,
   Produce, AddOffsetsToTxn, TxnOffsetCommit, EndTxn. Output and progress are therefore atomic:
   after a crash anywhere (worker or broker), the restarted worker's InitProducerId aborts the
   open transaction and it resumes from the last committed positions, so ``read_committed``
   readers of the output see every input record's output exactly once.

When the broker has no transaction coordinator (``transactional`` false in the config), the
worker uses an idempotent producer and commits positions with OffsetCommit after the output is
acknowledged: at least once (a crash between the two repeats up to one commit interval).

Failure handling, reported on the status pipe and by the exit code (the supervisor decides):
``EXIT_FAILED`` after ``--on-error stop`` committed everything before the bad record;
``EXIT_FATAL`` when the code cannot be loaded (restarting would not help); ``EXIT_MEMORY``
after a ``MemoryError`` (the address-space limit); any other non-zero code is a crash.
A per-record time limit is enforced by a watchdog thread that interrupts the main thread
(:class:`~streamd.transforms.runtime.TransformTimeout`, handled like any error of that
record); it also sends the heartbeats by which the supervisor detects a worker stuck where no
signal reaches it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_FAILED = 3
EXIT_FATAL = 4
EXIT_MEMORY = 5

E_NONE = 0
E_OFFSET_OUT_OF_RANGE = 1
E_UNKNOWN_TOPIC = 3
E_COORDINATOR_LOAD = 14
E_COORDINATOR_NOT_AVAILABLE = 15
E_NOT_COORDINATOR = 16
E_DUPLICATE_SEQUENCE = 46
E_CONCURRENT_TRANSACTIONS = 51
E_UNSTABLE_OFFSET_COMMIT = 88
RETRIABLE_TXN = {
    E_COORDINATOR_LOAD,
    E_COORDINATOR_NOT_AVAILABLE,
    E_NOT_COORDINATOR,
    E_CONCURRENT_TRANSACTIONS,
}
EARLIEST, LATEST = -2, -1
READ_COMMITTED = 1
METADATA_REFRESH_S = 30.0
STATUS_INTERVAL_S = 1.0
STATUS_AFTER_COMMIT_S = 0.2
HEARTBEAT_S = 1.0


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
    transactional: bool = True
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


class WorkerError(Exception):
    """The broker refused something the worker cannot work around (the worker exits)."""


class Fatal(Exception):
    """The transform cannot run at all (its code does not load); do not restart it."""


class StatusPipe:
    """JSON lines to the supervisor; one ``os.write`` per line under a lock (two threads)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        line = (json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n").encode()
        with self.lock:
            try:
                view = memoryview(line)
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
            except OSError:
                pass  # the supervisor is gone; the broker connection tells us soon enough


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the broker dies, even by kill -9 (PR_SET_PDEATHSIG);
    elsewhere the closed broker connection ends the worker at its next request."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)


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
        from streamd.transforms import wire
        from streamd.transforms.runtime import Applier, Outputs

        self.cfg = cfg
        self.status = status
        self.wire = wire
        self.fconn = wire.Connection(
            socket.socket(fileno=cfg.fetch_fd), f"streamd-transform-{cfg.name}"
        )
        self.pconn = wire.Connection(
            socket.socket(fileno=cfg.produce_fd), f"streamd-transform-{cfg.name}"
        )
        self.stopping = False
        self.out_topics = list(cfg.output_topics)
        if cfg.dead_letter is not None:
            self.out_topics.append(cfg.dead_letter)
        counts = self.metadata()
        self.input_partitions = counts[cfg.input_topic]
        self.outputs = Outputs(
            self.out_topics,
            {t: counts[t] for t in self.out_topics},
            transactional=cfg.transactional,
        )
        self.applier = Applier(
            fn,
            cfg.input_topic,
            self.out_topics,
            self.outputs,
            on_error=cfg.on_error,
            dead_letter=len(self.out_topics) - 1 if cfg.dead_letter is not None else None,
            report=self._record_error,
        )
        self.producer_id, self.producer_epoch = self.init_producer()
        self.sequences: dict[tuple[str, int], int] = {}
        self.positions: dict[int, int] = {}
        """Input partition -> next offset to transform (what a commit records)."""
        self.fetch_positions: dict[int, int] = {}
        """Input partition -> next offset to fetch (ahead of ``positions`` while pipelining)."""
        self.committed: dict[int, int] = {}
        self.stable: dict[int, int] = {}
        """Input partition -> last stable offset seen in a Fetch (lag = stable - committed)."""
        self.caught_up = False
        self.txn_partitions: set[tuple[str, int]] = set()
        self.txn_started = 0.0
        self.txn_offsets_added = False
        self.records_out = 0
        self.out_in_txn = 0
        self.last_meta = time.monotonic()
        self.last_status = 0.0
        self.fetch_pending = False
        self.busy = {"fetch_wait": 0.0, "transform": 0.0, "commit": 0.0}
        """Seconds spent waiting for Fetch answers, transforming (decode, transform(), encode,
        sending Produce) and committing: where a slow transform's time goes."""

    # ---- requests ------------------------------------------------------------------------

    def request(self, name: str, req: Any) -> Any:
        """A request on the produce connection, after the responses still due on it (the
        pipelined Produce responses, each checked)."""
        self.pconn.send(name, req)
        while len(self.pconn.pending) > 1:
            self._check_produce(self.pconn.receive())
        return self.pconn.receive()

    def drain(self) -> None:
        while self.pconn.pending:
            self._check_produce(self.pconn.receive())

    def metadata(self) -> dict[str, int]:
        m = self.wire.schema("Metadata")
        topics = [self.cfg.input_topic, *self.out_topics]
        resp = self.request(
            "Metadata",
            m.MetadataRequest(
                topics=tuple(m.MetadataRequestTopic(name=t) for t in topics),
                allow_auto_topic_creation=False,
                include_cluster_authorized_operations=False,
                include_topic_authorized_operations=False,
            ),
        )
        counts = {}
        for t in resp.topics:
            if t.error_code != E_NONE or not t.partitions:
                raise WorkerError(f"topic {t.name!r}: {_err(t.error_code)}")
            counts[t.name] = len(t.partitions)
        for t in topics:
            if t not in counts:
                raise WorkerError(f"topic {t!r} is missing from the broker's metadata")
        return counts

    def init_producer(self) -> tuple[int, int]:
        m = self.wire.schema("InitProducerId")
        txn_id = self.cfg.transactional_id if self.cfg.transactional else None
        for attempt in range(300):
            resp = self.request(
                "InitProducerId",
                m.InitProducerIdRequest(
                    transactional_id=txn_id,
                    transaction_timeout=self.wire.millis(self.cfg.transaction_timeout_ms),
                    producer_id=-1,
                    producer_epoch=-1,
                ),
            )
            if resp.error_code == E_NONE:
                return int(resp.producer_id), int(resp.producer_epoch)
            if resp.error_code not in RETRIABLE_TXN:
                raise WorkerError(f"InitProducerId: {_err(resp.error_code)}")
            _retrying("InitProducerId", resp.error_code, attempt)
            time.sleep(min(0.05 * (attempt + 1), 1.0))
        raise WorkerError("InitProducerId: the transaction coordinator stayed busy")

    def list_offsets(self, partitions: list[int], timestamp: int) -> dict[int, int]:
        m = self.wire.schema("ListOffsets")
        resp = self.request(
            "ListOffsets",
            m.ListOffsetsRequest(
                replica_id=-1,
                isolation_level=READ_COMMITTED,
                topics=(
                    m.ListOffsetsTopic(
                        name=self.cfg.input_topic,
                        partitions=tuple(
                            m.ListOffsetsPartition(partition_index=p, timestamp=timestamp)
                            for p in partitions
                        ),
                    ),
                ),
            ),
        )
        out = {}
        for t in resp.topics:
            for p in t.partitions:
                if p.error_code != E_NONE:
                    raise WorkerError(f"ListOffsets partition {p.partition_index}: "
                                      f"{_err(p.error_code)}")
                out[int(p.partition_index)] = int(p.offset)
        return out

    def committed_positions(self, partitions: list[int]) -> dict[int, int]:
        m = self.wire.schema("OffsetFetch")
        req = m.OffsetFetchRequest(
            group_id=self.cfg.group_id,
            topics=(
                m.OffsetFetchRequestTopic(
                    name=self.cfg.input_topic, partition_indexes=tuple(partitions)
                ),
            ),
            require_stable=True,
        )
        for attempt in range(600):
            resp = self.request("OffsetFetch", req)
            unstable = resp.error_code == E_UNSTABLE_OFFSET_COMMIT or any(
                p.error_code == E_UNSTABLE_OFFSET_COMMIT
                for t in resp.topics
                for p in t.partitions
            )
            if unstable or resp.error_code in RETRIABLE_TXN:
                _retrying("OffsetFetch", E_UNSTABLE_OFFSET_COMMIT if unstable else resp.error_code,
                          attempt)
                time.sleep(min(0.05 * (attempt + 1), 0.5))
                continue
            if resp.error_code != E_NONE:
                raise WorkerError(f"OffsetFetch: {_err(resp.error_code)}")
            out = {}
            for t in resp.topics:
                for p in t.partitions:
                    if p.error_code != E_NONE:
                        raise WorkerError(f"OffsetFetch: {_err(p.error_code)}")
                    if p.committed_offset >= 0:
                        out[int(p.partition_index)] = int(p.committed_offset)
            return out
        raise WorkerError("OffsetFetch: committed positions stayed unstable")

    def start_positions(self, partitions: list[int], start: str) -> dict[int, int]:
        from streamd.transforms.spec import parse_from

        kind, value = parse_from(start)
        if kind == "earliest":
            return self.list_offsets(partitions, EARLIEST)
        if kind == "latest":
            return self.list_offsets(partitions, LATEST)
        if kind == "offset":
            return {p: value for p in partitions}
        found = self.list_offsets(partitions, value)
        missing = [p for p, off in found.items() if off < 0]
        if missing:
            found.update(self.list_offsets(missing, LATEST))
        return found

    def add_partitions(self, partitions: list[int]) -> None:
        committed = self.committed_positions(partitions)
        fresh = [p for p in partitions if p not in committed]
        start = self.cfg.start if not self.positions else "earliest"
        if fresh:
            committed.update(self.start_positions(fresh, start))
        for p in partitions:
            self.positions[p] = self.fetch_positions[p] = committed[p]
            self.committed[p] = committed[p]

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        self.add_partitions(list(range(self.input_partitions)))
        self.status.send(
            "started",
            producer_id=self.producer_id,
            producer_epoch=self.producer_epoch,
            positions=_keyed(self.positions),
            transactional=self.cfg.transactional,
        )
        self.send_fetch()
        clock = time.monotonic
        busy = self.busy
        while True:
            t0 = clock()
            resp = self.fconn.receive()
            t1 = clock()
            self.fetch_pending = False
            batches = self.parse_fetch(resp)
            if not self.stopping:
                self.send_fetch(more=bool(batches))
            self.transform(batches)
            if self.outputs.parts:
                self.produce(self.outputs.take(sealed_only=True))
            t2 = clock()
            if self.stopping:
                self.commit()
                break
            if self.commit_due():
                self.commit()
            t3 = clock()
            busy["fetch_wait"] += t1 - t0
            busy["transform"] += t2 - t1
            busy["commit"] += t3 - t2
            self.housekeeping()
        self.report(force=True)

    def send_fetch(self, more: bool = False) -> None:
        """``more``: records are about to be transformed, so a transaction will be open: the
        Fetch must not hold its answer past the commit interval."""
        f = self.wire.schema("Fetch")
        cfg = self.cfg
        wait = cfg.fetch_max_wait_ms
        if self.txn_started:
            left = cfg.commit_interval_ms - (time.monotonic() - self.txn_started) * 1000
            wait = max(0, min(wait, int(left)))
        elif more or self.txn_dirty():
            wait = min(wait, cfg.commit_interval_ms)
        self.fconn.send(
            "Fetch",
            f.FetchRequest(
                replica_id=-1,
                max_wait=self.wire.millis(wait),
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
        self.fetch_pending = True

    def parse_fetch(self, resp: Any) -> list[tuple[int, list[Any]]]:
        """The data batches of a Fetch response per partition, with control batches and
        aborted transactions' batches left out (as a read_committed consumer does); moves the
        fetch positions past everything returned."""
        from aiokafka.record.memory_records import MemoryRecords

        if resp.error_code != E_NONE:
            raise WorkerError(f"Fetch: {_err(resp.error_code)}")
        out = []
        reset = []
        for t in resp.responses:
            for pd in t.partitions:
                p = int(pd.partition_index)
                if pd.error_code == E_OFFSET_OUT_OF_RANGE:
                    reset.append(p)
                    continue
                if pd.error_code != E_NONE:
                    raise WorkerError(f"Fetch partition {p}: {_err(pd.error_code)}")
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

    def reset_positions(self, partitions: list[int]) -> None:
        """OFFSET_OUT_OF_RANGE: retention passed the position (continue at the earliest
        offset) or the position is past the end (continue at the latest)."""
        earliest = self.list_offsets(partitions, EARLIEST)
        latest = self.list_offsets(partitions, LATEST)
        for p in partitions:
            pos = self.fetch_positions[p]
            new = earliest[p] if pos < earliest[p] else latest[p]
            self.status.send("reset", partition=p, position=pos, to=new)
            self.fetch_positions[p] = self.positions[p] = new

    def transform(self, batches: list[tuple[int, list[Any]]]) -> None:
        from streamd.transforms.runtime import StopAt

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
                        self.commit()
                        raise
                positions[p] = next_offset
        if self.txn_started == 0.0 and self.txn_dirty():
            self.txn_started = time.monotonic()

    def housekeeping(self) -> None:
        now = time.monotonic()
        if now - self.last_meta >= METADATA_REFRESH_S and not self.txn_dirty():
            self.last_meta = now
            counts = self.metadata()
            self.outputs.set_partition_counts({t: counts[t] for t in self.out_topics})
            grown = counts[self.cfg.input_topic]
            if grown > self.input_partitions:
                new = list(range(self.input_partitions, grown))
                self.input_partitions = grown
                self.add_partitions(new)
        if not self.caught_up and all(
            self.positions.get(p, 0) >= self.stable.get(p, 1 << 62) for p in self.positions
        ):
            self.caught_up = True
        self.report()

    # ---- transactions --------------------------------------------------------------------

    def txn_dirty(self) -> bool:
        return bool(self.out_in_txn or self.outputs.parts) or self.positions != self.committed

    def commit_due(self) -> bool:
        if not self.txn_dirty():
            return False
        if (time.monotonic() - self.txn_started) * 1000 >= self.cfg.commit_interval_ms:
            return True
        return self.outputs.pending_bytes() >= self.cfg.commit_bytes

    def produce(self, taken: list[tuple[str, int, list[tuple[Any, int]]]]) -> None:
        if not taken:
            return
        cfg = self.cfg
        if cfg.transactional:
            new = sorted({(t, p) for t, p, _ in taken} - self.txn_partitions)
            if new:
                self.add_partitions_to_txn(new)
        m = self.wire.schema("Produce")
        by_topic: dict[str, list[Any]] = {}
        for topic, partition, batches in taken:
            for builder, count in batches:
                seq = self.sequences.get((topic, partition), 0)
                builder.set_producer_state(self.producer_id, self.producer_epoch, seq)
                self.sequences[(topic, partition)] = (seq + count) & 0x7FFFFFFF
                self.out_in_txn += count
                by_topic.setdefault(topic, []).append(
                    m.PartitionProduceData(index=partition, records=bytes(builder.build()))
                )
        for topic, parts in by_topic.items():
            # One request per batch of a partition keeps a partition's batches in order
            # (Kafka accepts one batch per partition per request).
            while parts:
                seen: set[int] = set()
                now: list[Any] = []
                later: list[Any] = []
                for pdata in parts:
                    (later if pdata.index in seen else now).append(pdata)
                    seen.add(pdata.index)
                parts = later
                self.pconn.send(
                    "Produce",
                    m.ProduceRequest(
                        transactional_id=cfg.transactional_id if cfg.transactional else None,
                        acks=-1,
                        timeout=self.wire.millis(30_000),
                        topic_data=(m.TopicProduceData(name=topic, partition_data=tuple(now)),),
                    ),
                )

    def _check_produce(self, resp: Any) -> None:
        for t in resp.responses:
            for p in t.partition_responses:
                if p.error_code not in (E_NONE, E_DUPLICATE_SEQUENCE):
                    detail = f" ({p.error_message})" if p.error_message else ""
                    raise WorkerError(
                        f"Produce to {t.name}[{p.index}]: {_err(p.error_code)}{detail}"
                    )

    def add_partitions_to_txn(self, partitions: list[tuple[str, int]]) -> None:
        m = self.wire.schema("AddPartitionsToTxn")
        by_topic: dict[str, list[int]] = {}
        for t, p in partitions:
            by_topic.setdefault(t, []).append(p)
        req = m.AddPartitionsToTxnRequest(
            v3_and_below_transactional_id=self.cfg.transactional_id,
            v3_and_below_producer_id=self.producer_id,
            v3_and_below_producer_epoch=self.producer_epoch,
            v3_and_below_topics=tuple(
                m.AddPartitionsToTxnTopic(name=t, partitions=tuple(ps))
                for t, ps in by_topic.items()
            ),
        )
        for attempt in range(300):
            resp = self.request("AddPartitionsToTxn", req)
            errors = {
                int(r.partition_error_code)
                for t in resp.results_by_topic_v3_and_below
                for r in t.results_by_partition
            } - {E_NONE}
            if not errors:
                self.txn_partitions.update(partitions)
                return
            if errors <= RETRIABLE_TXN:
                _retrying("AddPartitionsToTxn", min(errors), attempt)
                time.sleep(min(0.02 * (attempt + 1), 0.5))
                continue
            raise WorkerError(
                "AddPartitionsToTxn: " + ", ".join(_err(e) for e in sorted(errors))
            )
        raise WorkerError("AddPartitionsToTxn: the transaction coordinator stayed busy")

    def commit(self) -> None:
        """Commit the output built so far together with the input positions."""
        if not self.txn_dirty():
            return
        records = self.outputs.records
        self.produce(self.outputs.take())
        self.drain()
        positions = dict(self.positions)
        if self.cfg.transactional:
            self._txn_commit(positions)
        else:
            self._plain_commit(positions)
        self.records_out += records
        self.outputs.records = 0
        self.out_in_txn = 0
        self.committed = positions
        self.txn_partitions = set()
        self.txn_offsets_added = False
        self.txn_started = 0.0
        if time.monotonic() - self.last_status >= STATUS_AFTER_COMMIT_S:
            self.report(force=True)

    def _txn_commit(self, positions: dict[int, int]) -> None:
        cfg = self.cfg
        pid, epoch = self.producer_id, self.producer_epoch
        if positions != self.committed:
            m = self.wire.schema("AddOffsetsToTxn")
            self._retry(
                "AddOffsetsToTxn",
                m.AddOffsetsToTxnRequest(
                    transactional_id=cfg.transactional_id,
                    producer_id=pid,
                    producer_epoch=epoch,
                    group_id=cfg.group_id,
                ),
            )
            c = self.wire.schema("TxnOffsetCommit")
            resp = self.request(
                "TxnOffsetCommit",
                c.TxnOffsetCommitRequest(
                    transactional_id=cfg.transactional_id,
                    group_id=cfg.group_id,
                    producer_id=pid,
                    producer_epoch=epoch,
                    generation_id=-1,
                    member_id="",
                    group_instance_id=None,
                    topics=(
                        c.TxnOffsetCommitRequestTopic(
                            name=cfg.input_topic,
                            partitions=tuple(
                                c.TxnOffsetCommitRequestPartition(
                                    partition_index=p,
                                    committed_offset=off,
                                    committed_leader_epoch=-1,
                                    committed_metadata="",
                                )
                                for p, off in sorted(positions.items())
                            ),
                        ),
                    ),
                ),
            )
            for t in resp.topics:
                for p in t.partitions:
                    if p.error_code != E_NONE:
                        raise WorkerError(f"TxnOffsetCommit: {_err(p.error_code)}")
        e = self.wire.schema("EndTxn")
        self._retry(
            "EndTxn",
            e.EndTxnRequest(
                transactional_id=cfg.transactional_id,
                producer_id=pid,
                producer_epoch=epoch,
                committed=True,
            ),
        )

    def _retry(self, name: str, req: Any) -> None:
        for attempt in range(300):
            resp = self.request(name, req)
            if resp.error_code == E_NONE:
                return
            if resp.error_code not in RETRIABLE_TXN:
                raise WorkerError(f"{name}: {_err(resp.error_code)}")
            _retrying(name, resp.error_code, attempt)
            time.sleep(min(0.02 * (attempt + 1), 0.5))
        raise WorkerError(f"{name}: the transaction coordinator stayed busy")

    def _plain_commit(self, positions: dict[int, int]) -> None:
        c = self.wire.schema("OffsetCommit")
        resp = self.request(
            "OffsetCommit",
            c.OffsetCommitRequest(
                group_id=self.cfg.group_id,
                generation_id_or_member_epoch=-1,
                member_id="",
                group_instance_id=None,
                topics=(
                    c.OffsetCommitRequestTopic(
                        name=self.cfg.input_topic,
                        partitions=tuple(
                            c.OffsetCommitRequestPartition(
                                partition_index=p,
                                committed_offset=off,
                                committed_leader_epoch=-1,
                                committed_metadata="",
                            )
                            for p, off in sorted(positions.items())
                        ),
                    ),
                ),
            ),
        )
        for t in resp.topics:
            for p in t.partitions:
                if p.error_code != E_NONE:
                    raise WorkerError(f"OffsetCommit: {_err(p.error_code)}")

    # ---- reporting -----------------------------------------------------------------------

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


def _retrying(what: str, code: int, attempt: int) -> None:
    if attempt % 20 == 0:
        print(f"{what}: {_err(code)}; retrying (attempt {attempt + 1})", file=sys.stderr,
              flush=True)


def _is_abort_marker(batch: Any) -> bool:
    for rec in batch:
        key = rec.key
        return bool(key is not None and len(key) >= 4 and key[2:4] == b"\x00\x00")
    return False


def _err(code: int) -> str:
    try:
        from streamd.errors import ErrorCode

        return f"{ErrorCode(int(code)).name} ({int(code)})"
    except ValueError:
        return f"error {int(code)}"


class Watchdog(threading.Thread):
    """Heartbeats to the supervisor, and the per-record time limit.

    The main thread counts transform calls (``Applier.calls``); when the count has not moved
    for ``limit_s`` while a batch is being transformed, the current record is hanging, and the
    watchdog sends SIGUSR1 to the main thread, whose handler raises
    :class:`~streamd.transforms.runtime.TransformTimeout` in the transform (also interrupting a
    ``sleep`` or a blocking read). Code that never returns to the interpreter holds the GIL,
    so no heartbeat leaves either: the supervisor kills the worker after its heartbeat timeout.
    A transform that swallows the interrupt and goes on hanging loses its heartbeats too, once
    the call has lasted twice the limit.
    """

    def __init__(self, status: StatusPipe, limit_s: float) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.status = status
        self.limit_s = limit_s
        self.applier: Any = None
        self.fired_for = -1
        self.main_ident = threading.main_thread().ident

    def install(self) -> None:
        from streamd.transforms.runtime import TransformTimeout

        limit_ms = int(self.limit_s * 1000)

        def on_signal(signum: int, frame: Any) -> None:
            a = self.applier
            if a is not None and a.in_transform and a.calls == self.fired_for:
                raise TransformTimeout(f"the record took longer than {limit_ms} ms")

        signal.signal(signal.SIGUSR1, on_signal)

    def run(self) -> None:
        tick = min(HEARTBEAT_S, self.limit_s / 4)
        last_calls, since, last_beat = -1, time.monotonic(), 0.0
        while True:
            time.sleep(tick)
            now = time.monotonic()
            a = self.applier
            stuck = False
            if a is not None:
                calls = a.calls
                if not a.in_transform or calls != last_calls:
                    last_calls, since = calls, now
                elif now - since >= self.limit_s and self.fired_for != calls:
                    self.fired_for = calls
                    assert self.main_ident is not None
                    signal.pthread_kill(self.main_ident, signal.SIGUSR1)
                # Still in the same call long after the interrupt (the transform caught it):
                # stop the heartbeats, so the supervisor kills the worker.
                stuck = self.fired_for == calls and now - since >= 2 * self.limit_s
            if now - last_beat >= HEARTBEAT_S and not stuck:
                self.status.send("hb")
                last_beat = now


class LogStream:
    """``sys.stdout``/``sys.stderr`` of the worker: lines go to ``worker.log`` (descriptors 1
    and 2, where the supervisor pointed them) with a UTC time in front; past ``max_bytes`` the
    file is rotated to ``worker.log.1`` and descriptors 1 and 2 are moved to a new one, so a
    chatty transform costs the broker nothing and cannot fill the disk."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.at_line_start = True
        try:
            self.size = os.fstat(1).st_size
        except OSError:
            self.size = 0

    def write(self, text: str) -> int:
        if not text:
            return 0
        parts = text.splitlines(keepends=True)
        out = []
        for part in parts:
            if self.at_line_start:
                out.append(time.strftime("%Y-%m-%dT%H:%M:%S ", time.gmtime()))
            out.append(part)
            self.at_line_start = part.endswith("\n")
        data = "".join(out).encode(errors="replace")
        with contextlib.suppress(OSError):
            os.write(1, data)
        self.size += len(data)
        if self.size > self.max_bytes:
            self.rotate()
        return len(text)

    def rotate(self) -> None:
        with contextlib.suppress(OSError):
            os.replace(self.path, self.path + ".1")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        self.size = 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 1


def confine(extra: dict[str, Any]) -> None:
    """Lower priority, bound the address space, send output to the rotating log."""
    parent = extra.get("parent_pid")
    if parent is not None and os.getppid() != parent:
        raise SystemExit(EXIT_CRASH)  # the broker died before PR_SET_PDEATHSIG was set
    with contextlib.suppress(OSError):
        os.nice(int(extra.get("nice", 0)))
    limit = int(extra.get("memory_limit_bytes", 0))
    if limit > 0:
        import resource

        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (2 * limit, 2 * limit))
    if extra.get("log_path"):
        stream = LogStream(str(extra["log_path"]), int(extra.get("log_max_bytes", 1 << 20)))
        sys.stdout = sys.stderr = stream  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    die_with_parent()
    with open(argv[1]) as f:
        cfg = WorkerConfig(**json.load(f))
    confine(cfg.extra)
    status = StatusPipe(cfg.status_fd)
    stop_event: list[Worker] = []

    def on_term(signum: int, frame: Any) -> None:
        for w in stop_event:
            w.stopping = True
        if not stop_event:
            raise SystemExit(EXIT_OK)

    signal.signal(signal.SIGTERM, on_term)
    watchdog = Watchdog(status, cfg.record_timeout_ms / 1000)
    watchdog.install()
    watchdog.start()
    from streamd.transforms.runtime import StopAt

    try:
        fn = load_transform(cfg.code_path)
        worker = Worker(cfg, fn, status)
        stop_event.append(worker)
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
