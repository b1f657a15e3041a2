"""What a data transform's code sees: the records it is given and the one it may return.

A transform is a Python file defining ``transform(record)``, deployed with ``streamd transform
deploy``. For every record of its input topic, in offset order per partition, the broker's
worker process calls it with an :class:`InputRecord` and writes what it returns:

- ``None``: the record is dropped;
- one :class:`Record` (or the input record itself, unchanged: passed through);
- a list of them (possibly empty).

Example (``upper.py``)::

    from streamd.transform import Record

    def transform(record):
        if record.value is None:
            return None
        return Record(key=record.key, value=record.value.upper(), headers=record.headers)

This module is all a transform needs to import: it holds no broker code and imports nothing
but the standard library, so it loads instantly in the worker and in a transform's own tests.

Output rules (the worker applies them; they are stated here because transforms rely on them):

- ``topic`` names one of the deployment's ``--output-topic``\\ s; None means the first one.
- A record keeps the timestamp of the input record it came from.
- Partition: a record with a key goes where Kafka's default partitioner puts it (murmur2 of
  the key, as every Kafka client does); a record without a key goes to the input record's
  partition number modulo the output topic's partition count.
- ``key`` and ``value`` are bytes or None (a ``str`` is encoded as UTF-8); ``headers`` is a
  list of ``(str, bytes)`` pairs (a ``str`` value is encoded as UTF-8, None is kept).
"""

from __future__ import annotations

__all__ = ["InputRecord", "Record"]

Headers = list[tuple[str, bytes | None]]


class Record:
    """A record for the transform to return. Only ``topic`` is optional; headers default to
    none. Plain attributes: a transform may build one and change it before returning it."""

    __slots__ = ("key", "value", "headers", "topic")

    def __init__(
        self,
        key: bytes | str | None = None,
        value: bytes | str | None = None,
        headers: Headers | None = None,
        topic: str | None = None,
    ) -> None:
        self.key = key
        self.value = value
        self.headers = headers if headers is not None else []
        self.topic = topic

    def __repr__(self) -> str:
        return (
            f"Record(key={self.key!r}, value={self.value!r}, headers={self.headers!r}, "
            f"topic={self.topic!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.key, self.value, self.headers, self.topic) == (
            other.key,
            other.value,
            other.headers,
            other.topic,
        )

    __hash__ = None  # type: ignore[assignment]


class InputRecord:
    """One record of the input topic, as the transform receives it.

    ``timestamp`` is in milliseconds since the epoch; ``topic``, ``partition`` and ``offset``
    say where it was read. Returned unchanged, it is written to the first output topic with
    its key, value and headers (the identity transform is ``return record``).
    """

    __slots__ = ("key", "value", "headers", "timestamp", "topic", "partition", "offset")

    def __init__(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        timestamp: int,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp
        self.topic = topic
        self.partition = partition
        self.offset = offset

    def __repr__(self) -> str:
        return (
            f"InputRecord(topic={self.topic!r}, partition={self.partition}, "
            f"offset={self.offset}, timestamp={self.timestamp}, key={self.key!r}, "
            f"value={self.value!r}, headers={self.headers!r})"
        )
