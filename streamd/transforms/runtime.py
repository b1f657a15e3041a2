"""The worker's inner loop: input batches -> ``transform(record)`` -> output batches.

No I/O here (the worker owns the sockets), so the loop is testable with plain bytes.

:class:`Applier` walks the records of one input batch (aiokafka's compiled v2 batch reader
decodes them: per-record work in C, one small Python object per record for the transform),
calls the transform and appends what it returns to :class:`Outputs`, which builds one v2 batch
per output partition with aiokafka's compiled builder. Nothing is written to the broker from
here: the worker produces the finished batches and commits them, together with the input
position, in one transaction.

A record's outputs are validated before any of them is appended, so a record either adds all
of its outputs or (on error) none. Errors of the transform follow ``--on-error``:

- ``stop``: :class:`StopAt` is raised; the worker commits everything before the record and
  reports the transform failed at that offset;
- ``skip``: the record is dropped and counted;
- ``dead-letter=T``: the original record (key, value, headers, timestamp) goes to ``T``,
  partitioned like any output record.

A ``MemoryError`` is not a record's error: it propagates, and the worker exits so its
supervisor restarts it with fresh memory (memory may have grown over many records).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streamd.transform import InputRecord, Record
from streamd.transforms.partitioner import KeyPartitioner

BATCH_BYTES = 1_000_000
"""Target size of one output batch (below Kafka's default max.message.bytes of 1 MiB)."""

Emitted = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]
NO_HEADERS: list[tuple[str, bytes | None]] = []
"""Shared by every record without headers (the batch builder only reads it)."""


class TransformTimeout(Exception):
    """Raised into the transform when one record takes longer than the per-record limit."""


class StopAt(Exception):
    """``--on-error stop``: the transform failed on ``(partition, offset)``."""

    def __init__(self, partition: int, offset: int, error: str) -> None:
        super().__init__(f"partition {partition} offset {offset}: {error}")
        self.partition = partition
        self.offset = offset
        self.error = error


@dataclass(frozen=True)
class RecordError:
    partition: int
    offset: int
    error: str
    action: str


def describe(exc: BaseException) -> str:
    """One line: the exception and the innermost frame of the transform's own file."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    for frame in reversed(frames):
        if "streamd/transforms/" not in frame.filename.replace("\\", "/"):
            where = f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"
            break
    text = str(exc)
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


class _Partition:
    """The open batch and the sealed batches of one output partition."""

    __slots__ = ("builder", "count", "sealed", "sealed_records")

    def __init__(self) -> None:
        self.builder: Any = None
        self.count = 0
        self.sealed: list[tuple[Any, int]] = []
        self.sealed_records = 0


class Outputs:
    """Output batches of the transaction being built, per (topic, partition)."""

    def __init__(self, topics: list[str], partition_counts: dict[str, int]) -> None:
        self.topics = topics
        self.counts = [partition_counts[t] for t in topics]
        self.parts: dict[tuple[int, int], _Partition] = {}
        self.keys = KeyPartitioner()
        self.records = 0

    def set_partition_counts(self, partition_counts: dict[str, int]) -> None:
        self.counts = [partition_counts[t] for t in self.topics]

    def append(
        self,
        topic_index: int,
        input_partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]],
        timestamp: int,
    ) -> None:
        count = self.counts[topic_index]
        partition = (
            input_partition % count if key is None else self.keys.partition(key, count)
        )
        part = self.parts.get((topic_index, partition))
        if part is None:
            part = self.parts[(topic_index, partition)] = _Partition()
        builder = part.builder
        if builder is None:
            builder = part.builder = _new_builder()
        if builder.append(part.count, timestamp, key, value, headers) is None:
            part.sealed.append((builder, part.count))
            part.sealed_records += part.count
            builder = part.builder = _new_builder()
            part.count = 0
            if builder.append(0, timestamp, key, value, headers) is None:
                raise ValueError("record does not fit an empty batch")  # pragma: no cover
        part.count += 1
        self.records += 1

    def pending_bytes(self) -> int:
        total = 0
        for part in self.parts.values():
            total += sum(b.size() for b, _ in part.sealed)
            if part.builder is not None:
                total += part.builder.size()
        return total

    def take(self, sealed_only: bool = False) -> list[tuple[str, int, list[tuple[Any, int]]]]:
        """The batches to produce now, as (topic, partition, [(builder, records)]): the sealed
        ones, and unless ``sealed_only`` the open ones too. Taken batches leave ``Outputs``."""
        out = []
        for (ti, partition), part in self.parts.items():
            batches = part.sealed
            if not sealed_only and part.builder is not None and part.count:
                batches = batches + [(part.builder, part.count)]
                part.builder, part.count = None, 0
            if batches:
                out.append((self.topics[ti], partition, batches))
                part.sealed = []
                part.sealed_records = 0
        if not sealed_only:
            self.parts.clear()
        return out


def _new_builder() -> Any:
    return DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=1,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=BATCH_BYTES,
    )


def _as_bytes(v: Any, what: str) -> bytes | None:
    if v is None or v.__class__ is bytes:
        return v  # type: ignore[no-any-return]
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"record {what} must be bytes, str or None, not {type(v).__name__}")


def _headers(hs: Any) -> list[tuple[str, bytes | None]]:
    if not hs:
        return []
    out = []
    for item in hs:
        try:
            k, v = item
        except (TypeError, ValueError):
            raise TypeError("record headers must be (str, bytes) pairs") from None
        if not isinstance(k, str):
            raise TypeError(f"header key must be str, not {type(k).__name__}")
        out.append((k, _as_bytes(v, f"header {k!r} value")))
    return out


class Applier:
    """Applies the transform to input batches, appending its results to ``outputs``.

    ``dead_letter`` is the index of the dead-letter topic in ``outputs.topics`` (or None).
    ``calls`` counts transform calls; the worker's watchdog reads it to tell a hanging record
    from a busy loop (see :mod:`streamd.transforms.worker`).
    """

    def __init__(
        self,
        fn: Callable[[InputRecord], Any],
        input_topic: str,
        output_topics: list[str],
        outputs: Outputs,
        *,
        on_error: str,
        dead_letter: int | None = None,
        report: Callable[[RecordError], None] = lambda e: None,
    ) -> None:
        if on_error not in ("stop", "skip", "dead-letter"):
            raise ValueError(f"on_error {on_error!r}")
        self.fn = fn
        self.input_topic = input_topic
        self.outputs = outputs
        self.on_error = on_error
        self.dead_letter = dead_letter
        self.report = report
        self.topic_index = {t: i for i, t in enumerate(output_topics)}
        self.declared = ", ".join(output_topics)
        self.calls = 0
        self.in_transform = False
        self.records_in = 0
        self.skipped = 0
        self.dead_lettered = 0
        self.last_error: RecordError | None = None

    def apply(self, partition: int, records: Iterable[Any]) -> None:
        """Every record of one input batch, in offset order."""
        fn = self.fn
        topic = self.input_topic
        append = self.outputs.append
        n = 0
        self.in_transform = True
        try:
            for rec in records:
                n += 1
                inp = InputRecord(
                    rec.key, rec.value, rec.headers, rec.timestamp, topic, partition, rec.offset
                )
                self.calls += 1
                try:
                    out = fn(inp)
                    if out is None:
                        continue
                    cls = out.__class__
                    if cls is InputRecord or (cls is Record and out.topic is None):
                        # The common case, inline: one record for the first output topic.
                        key, value, headers = out.key, out.value, out.headers
                        if not (key is None or key.__class__ is bytes):
                            key = _as_bytes(key, "key")
                        if not (value is None or value.__class__ is bytes):
                            value = _as_bytes(value, "value")
                        headers = _headers(headers) if headers else NO_HEADERS
                        append(0, partition, key, value, headers, inp.timestamp)
                    elif cls is list:
                        emitted = [self._emitted(o) for o in out]
                        for ti, key, value, headers in emitted:
                            append(ti, partition, key, value, headers, inp.timestamp)
                    else:
                        ti, key, value, headers = self._emitted(out)
                        append(ti, partition, key, value, headers, inp.timestamp)
                except MemoryError:
                    raise
                except (Exception, SystemExit) as exc:
                    self._failed(inp, exc)
        finally:
            self.in_transform = False
            self.records_in += n

    def _emitted(self, o: Any) -> Emitted:
        cls = o.__class__
        if cls is InputRecord:
            ti = 0
        elif cls is Record:
            if o.topic is None:
                ti = 0
            else:
                found = self.topic_index.get(o.topic)
                if found is None or found == self.dead_letter:
                    raise ValueError(
                        f"topic {o.topic!r} is not an output topic of this transform "
                        f"(declared: {self.declared})"
                    )
                ti = found
        else:
            raise TypeError(
                f"transform returned {cls.__name__}; expected streamd.transform.Record, the "
                "input record, a list of them, or None"
            )
        key, value, headers = o.key, o.value, o.headers
        if not (key is None or key.__class__ is bytes):
            key = _as_bytes(key, "key")
        if not (value is None or value.__class__ is bytes):
            value = _as_bytes(value, "value")
        headers = _headers(headers) if headers else NO_HEADERS
        return ti, key, value, headers

    def _failed(self, inp: InputRecord, exc: BaseException) -> None:
        error = describe(exc)
        partition, offset = inp.partition, inp.offset
        if self.on_error == "stop":
            self.last_error = RecordError(partition, offset, error, "stop")
            raise StopAt(partition, offset, error) from exc
        if self.on_error == "dead-letter":
            assert self.dead_letter is not None
            self.outputs.append(
                self.dead_letter,
                partition,
                inp.key,
                inp.value,
                _headers(inp.headers),
                inp.timestamp,
            )
            self.dead_lettered += 1
            action = "dead-letter"
        else:
            self.skipped += 1
            action = "skip"
        self.last_error = RecordError(partition, offset, error, action)
        self.report(self.last_error)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
