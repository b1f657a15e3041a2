"""The worker's produce connection: lookups, the producer id, and transactions.

:class:`Session` owns the second of the worker's two broker connections (the first carries
only Fetch). Every exchange on it holds one lock, so the main thread's occasional lookups
(metadata refresh, offset resets) and the :class:`Committer` thread's transactions never
interleave on the socket.

A transaction, as Kafka clients run it: AddPartitionsToTxn for the partitions written (its
answer awaited before any Produce to them), Produce of every output batch (pipelined, each
answer checked), AddOffsetsToTxn + TxnOffsetCommit of the input positions (consumer group
``streamd-transform-NAME``), EndTxn(commit). The committer runs them on its own thread, so the
main thread transforms the next records while a transaction commits (its round trips wait on
fsyncs); at most one more transaction waits behind the running one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamd.transforms import wire

E_NONE = 0
E_COORDINATOR_LOAD = 14
E_COORDINATOR_NOT_AVAILABLE = 15
E_NOT_COORDINATOR = 16
E_DUPLICATE_SEQUENCE = 46
E_CONCURRENT_TRANSACTIONS = 51
E_UNSTABLE_OFFSET_COMMIT = 88
RETRIABLE_TXN = frozenset(
    {E_COORDINATOR_LOAD, E_COORDINATOR_NOT_AVAILABLE, E_NOT_COORDINATOR, E_CONCURRENT_TRANSACTIONS}
)
READ_COMMITTED = 1
RETRIES = 300

Taken = list[tuple[str, int, list[tuple[Any, int]]]]
"""Output batches: (topic, partition, [(batch builder, record count)])."""


class WorkerError(Exception):
    """The broker refused something the worker cannot work around (the worker exits)."""


def error_name(code: int) -> str:
    try:
        from streamd.errors import ErrorCode

        return f"{ErrorCode(int(code)).name} ({int(code)})"
    except ValueError:
        return f"error {int(code)}"


def retrying(what: str, code: int, attempt: int) -> None:
    """Backoff before a retry of a retriable answer; every 20th is logged."""
    if attempt % 20 == 0:
        import sys

        print(f"{what}: {error_name(code)}; retrying (attempt {attempt + 1})", file=sys.stderr,
              flush=True)
    time.sleep(min(0.02 * (attempt + 1), 0.5))


@dataclass
class Job:
    """One transaction: the output batches and the input positions they complete."""

    batches: Taken
    positions: dict[int, int]
    records: int


class Session:
    def __init__(
        self,
        conn: wire.Connection,
        *,
        group_id: str,
        transactional_id: str,
        input_topic: str,
        transaction_timeout_ms: int,
    ) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.group_id = group_id
        self.transactional_id = transactional_id
        self.input_topic = input_topic
        self.transaction_timeout_ms = transaction_timeout_ms
        self.producer_id = -1
        self.producer_epoch = -1
        self.sequences: dict[tuple[str, int], int] = {}
        self._schemas: dict[str, Any] = {}

    def schema(self, name: str) -> Any:
        s = self._schemas.get(name)
        if s is None:
            s = self._schemas[name] = wire.schema(name)
        return s

    def request(self, name: str, req: Any) -> Any:
        """One request, after the answers still due on the connection (pipelined Produce
        answers, each checked). The caller holds :attr:`lock`."""
        conn = self.conn
        conn.send(name, req)
        while len(conn.pending) > 1:
            self._check_produce(conn.receive())
        return conn.receive()

    def call(self, name: str, req: Any) -> Any:
        with self.lock:
            return self.request(name, req)

    # ---- lookups ---------------------------------------------------------------------------

    def metadata(self, topics: list[str]) -> dict[str, int]:
        m = self.schema("Metadata")
        resp = self.call(
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
                raise WorkerError(f"topic {t.name!r}: {error_name(t.error_code)}")
            counts[t.name] = len(t.partitions)
        for t in topics:
            if t not in counts:
                raise WorkerError(f"topic {t!r} is missing from the broker's metadata")
        return counts

    def init_producer(self) -> None:
        """InitProducerId: with a transactional id this fences any earlier incarnation and
        aborts the transaction it left open."""
        m = self.schema("InitProducerId")
        for attempt in range(RETRIES):
            resp = self.call(
                "InitProducerId",
                m.InitProducerIdRequest(
                    transactional_id=self.transactional_id,
                    transaction_timeout=wire.millis(self.transaction_timeout_ms),
                    producer_id=-1,
                    producer_epoch=-1,
                ),
            )
            if resp.error_code == E_NONE:
                self.producer_id, self.producer_epoch = int(resp.producer_id), int(
                    resp.producer_epoch
                )
                self.sequences.clear()
                return
            if resp.error_code not in RETRIABLE_TXN:
                raise WorkerError(f"InitProducerId: {error_name(resp.error_code)}")
            retrying("InitProducerId", resp.error_code, attempt)
        raise WorkerError("InitProducerId: the transaction coordinator stayed busy")

    def list_offsets(self, partitions: list[int], timestamp: int) -> dict[int, int]:
        m = self.schema("ListOffsets")
        resp = self.call(
            "ListOffsets",
            m.ListOffsetsRequest(
                replica_id=-1,
                isolation_level=READ_COMMITTED,
                topics=(
                    m.ListOffsetsTopic(
                        name=self.input_topic,
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
                    raise WorkerError(
                        f"ListOffsets partition {p.partition_index}: {error_name(p.error_code)}"
                    )
                out[int(p.partition_index)] = int(p.offset)
        return out

    def committed_positions(self, partitions: list[int]) -> dict[int, int]:
        """The group's committed input positions (``require_stable``: a position a
        transaction is still committing is waited for, never read half-done)."""
        m = self.schema("OffsetFetch")
        req = m.OffsetFetchRequest(
            group_id=self.group_id,
            topics=(
                m.OffsetFetchRequestTopic(
                    name=self.input_topic, partition_indexes=tuple(partitions)
                ),
            ),
            require_stable=True,
        )
        for attempt in range(RETRIES * 2):
            resp = self.call("OffsetFetch", req)
            unstable = resp.error_code == E_UNSTABLE_OFFSET_COMMIT or any(
                p.error_code == E_UNSTABLE_OFFSET_COMMIT
                for t in resp.topics
                for p in t.partitions
            )
            if unstable or resp.error_code in RETRIABLE_TXN:
                retrying(
                    "OffsetFetch", E_UNSTABLE_OFFSET_COMMIT if unstable else resp.error_code,
                    attempt,
                )
                continue
            if resp.error_code != E_NONE:
                raise WorkerError(f"OffsetFetch: {error_name(resp.error_code)}")
            out = {}
            for t in resp.topics:
                for p in t.partitions:
                    if p.error_code != E_NONE:
                        raise WorkerError(f"OffsetFetch: {error_name(p.error_code)}")
                    if p.committed_offset >= 0:
                        out[int(p.partition_index)] = int(p.committed_offset)
            return out
        raise WorkerError("OffsetFetch: committed positions stayed unstable")

    # ---- one transaction -------------------------------------------------------------------

    def commit(self, job: Job, previous: dict[int, int]) -> None:
        """Write ``job`` and commit it (see the module docstring). ``previous``: the positions
        last committed (unchanged positions need no offset commit)."""
        with self.lock:
            if job.batches:
                self._add_partitions(sorted({(t, p) for t, p, _ in job.batches}))
            self._produce(job.batches)
            while self.conn.pending:
                self._check_produce(self.conn.receive())
            if job.positions != previous:
                self._txn_offsets(job.positions)
            self._retry(
                "EndTxn",
                self.schema("EndTxn").EndTxnRequest(
                    transactional_id=self.transactional_id,
                    producer_id=self.producer_id,
                    producer_epoch=self.producer_epoch,
                    committed=True,
                ),
            )

    def _add_partitions(self, partitions: list[tuple[str, int]]) -> None:
        m = self.schema("AddPartitionsToTxn")
        by_topic: dict[str, list[int]] = {}
        for t, p in partitions:
            by_topic.setdefault(t, []).append(p)
        req = m.AddPartitionsToTxnRequest(
            v3_and_below_transactional_id=self.transactional_id,
            v3_and_below_producer_id=self.producer_id,
            v3_and_below_producer_epoch=self.producer_epoch,
            v3_and_below_topics=tuple(
                m.AddPartitionsToTxnTopic(name=t, partitions=tuple(ps))
                for t, ps in by_topic.items()
            ),
        )
        for attempt in range(RETRIES):
            resp = self.request("AddPartitionsToTxn", req)
            errors = {
                int(r.partition_error_code)
                for t in resp.results_by_topic_v3_and_below
                for r in t.results_by_partition
            } - {E_NONE}
            if not errors:
                return
            if errors <= RETRIABLE_TXN:
                retrying("AddPartitionsToTxn", min(errors), attempt)
                continue
            raise WorkerError(
                "AddPartitionsToTxn: " + ", ".join(error_name(e) for e in sorted(errors))
            )
        raise WorkerError("AddPartitionsToTxn: the transaction coordinator stayed busy")

    def _produce(self, taken: Taken) -> None:
        """Send every batch; a partition's batches go in separate requests, in order (Kafka
        takes one batch per partition per request). Answers are checked by the next
        :meth:`request` or the drain in :meth:`commit`."""
        if not taken:
            return
        m = self.schema("Produce")
        pid, epoch = self.producer_id, self.producer_epoch
        rounds: list[dict[str, list[Any]]] = []
        for topic, partition, batches in taken:
            for i, (builder, count) in enumerate(batches):
                seq = self.sequences.get((topic, partition), 0)
                builder.set_producer_state(pid, epoch, seq)
                self.sequences[(topic, partition)] = (seq + count) & 0x7FFFFFFF
                if len(rounds) <= i:
                    rounds.append({})
                rounds[i].setdefault(topic, []).append(
                    m.PartitionProduceData(index=partition, records=bytes(builder.build()))
                )
        for by_topic in rounds:
            self.conn.send(
                "Produce",
                m.ProduceRequest(
                    transactional_id=self.transactional_id,
                    acks=-1,
                    timeout=wire.millis(30_000),
                    topic_data=tuple(
                        m.TopicProduceData(name=t, partition_data=tuple(parts))
                        for t, parts in by_topic.items()
                    ),
                ),
            )

    def _check_produce(self, resp: Any) -> None:
        for t in resp.responses:
            for p in t.partition_responses:
                if p.error_code not in (E_NONE, E_DUPLICATE_SEQUENCE):
                    detail = f" ({p.error_message})" if p.error_message else ""
                    raise WorkerError(
                        f"Produce to {t.name}[{p.index}]: {error_name(p.error_code)}{detail}"
                    )

    def _txn_offsets(self, positions: dict[int, int]) -> None:
        self._retry(
            "AddOffsetsToTxn",
            self.schema("AddOffsetsToTxn").AddOffsetsToTxnRequest(
                transactional_id=self.transactional_id,
                producer_id=self.producer_id,
                producer_epoch=self.producer_epoch,
                group_id=self.group_id,
            ),
        )
        c = self.schema("TxnOffsetCommit")
        resp = self.request(
            "TxnOffsetCommit",
            c.TxnOffsetCommitRequest(
                transactional_id=self.transactional_id,
                group_id=self.group_id,
                producer_id=self.producer_id,
                producer_epoch=self.producer_epoch,
                generation_id=-1,
                member_id="",
                group_instance_id=None,
                topics=(
                    c.TxnOffsetCommitRequestTopic(
                        name=self.input_topic,
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
                    raise WorkerError(f"TxnOffsetCommit: {error_name(p.error_code)}")

    def _retry(self, name: str, req: Any) -> None:
        for attempt in range(RETRIES):
            resp = self.request(name, req)
            if resp.error_code == E_NONE:
                return
            if resp.error_code not in RETRIABLE_TXN:
                raise WorkerError(f"{name}: {error_name(resp.error_code)}")
            retrying(name, resp.error_code, attempt)
        raise WorkerError(f"{name}: the transaction coordinator stayed busy")


class Committer(threading.Thread):
    """Commits jobs in order on its own thread; ``done(job)`` after each commit.

    :meth:`submit` hands over the next job and returns at once unless one is already waiting
    (then it waits: at most one running and one waiting job, so output held in memory stays
    bounded). A failed commit is kept and raised by the next :meth:`submit` or :meth:`flush`
    in the main thread; the worker then exits and its successor's InitProducerId aborts what
    the failed transaction left open.
    """

    def __init__(
        self, session: Session, committed: dict[int, int], done: Callable[[Job], None]
    ) -> None:
        super().__init__(name="committer", daemon=True)
        self.session = session
        self.committed = dict(committed)
        self.done = done
        self.cond = threading.Condition()
        self.waiting: Job | None = None
        self.running = False
        self.error: BaseException | None = None

    def submit(self, job: Job) -> None:
        with self.cond:
            while self.waiting is not None and self.error is None:
                self.cond.wait()
            self._raise()
            self.waiting = job
            self.cond.notify_all()

    def flush(self) -> None:
        """Wait until every submitted job is committed."""
        with self.cond:
            while (self.waiting is not None or self.running) and self.error is None:
                self.cond.wait()
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        while True:
            with self.cond:
                while self.waiting is None:
                    self.cond.wait()
                job, self.waiting, self.running = self.waiting, None, True
                self.cond.notify_all()
            try:
                self.session.commit(job, self.committed)
                self.committed = dict(job.positions)
                self.done(job)
            except BaseException as exc:
                with self.cond:
                    self.error = exc
                    self.running = False
                    self.cond.notify_all()
                return
            with self.cond:
                self.running = False
                self.cond.notify_all()
