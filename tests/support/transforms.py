"""Helpers for data-transform tests: the admin API, waiting on a transform, reading its output.

Output is read with ``isolation.level=read_committed`` (what exactly-once promises to such
readers) by a consumer with manual assignment, up to the high watermark of every partition,
re-read until it stops moving, so a check sees everything committed and nothing twice.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from tests.support.broker import BrokerProcess

ENABLED = {"transforms.enabled": "true", "transforms.commit_interval_ms": "100"}

UPPER = """\
import os
import time

from streamd.transform import Record

DELAY = float(os.environ.get("DELAY_S", "0"))


def transform(record):
    if DELAY:
        time.sleep(DELAY)
    return Record(key=record.key, value=record.value.upper(), headers=record.headers)
"""

BAD_RECORD = """\
from streamd.transform import Record


def transform(record):
    if record.value == b"bad":
        raise ValueError("cannot take this one")
    return Record(key=record.key, value=record.value.upper(), headers=record.headers)
"""


@dataclass(frozen=True)
class Out:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


def admin(broker: BrokerProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{broker.admin_port}{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def deploy(
    broker: BrokerProcess,
    name: str,
    code: str,
    input_topic: str,
    outputs: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    doc = {
        "name": name,
        "input_topic": input_topic,
        "output_topics": list(outputs),
        "code": code,
        "file_name": f"{name}.py",
        **extra,
    }
    status, reply = admin(broker, "POST", "/v1/transforms", doc)
    assert status == 200, reply
    return reply  # type: ignore[no-any-return]


def describe(broker: BrokerProcess, name: str) -> dict[str, Any]:
    status, doc = admin(broker, "GET", f"/v1/transforms/{name}")
    assert status == 200, doc
    return doc  # type: ignore[no-any-return]


def wait_for(
    broker: BrokerProcess,
    name: str,
    what: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 60.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = describe(broker, name)
        if predicate(doc):
            return doc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for transform {name} to {what}; last: {doc}")


def committed_total(doc: dict[str, Any]) -> int:
    """Input records committed so far (the sum of committed positions)."""
    return sum(p["committed_offset"] or 0 for p in doc["partitions"])


def caught_up(doc: dict[str, Any], total: int) -> bool:
    """Every input record committed (lag 0 with ``total`` input records)."""
    committed = [p["committed_offset"] for p in doc["partitions"]]
    return None not in committed and doc["lag"] == 0 and sum(committed) >= total


def read_committed(bootstrap: str, topic: str, partitions: int) -> dict[int, list[Out]]:
    """Every committed record of ``topic``, per partition, in offset order: read until every
    partition reports its end (librdkafka's partition EOF, past any transaction marker) at its
    current high watermark, so an open transaction (last stable offset below the high
    watermark) is waited for rather than missed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "streamd-tests-no-group",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    out: dict[int, list[Out]] = {p: [] for p in range(partitions)}
    eof: dict[int, int] = {}
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof[msg.partition()] = msg.offset()
                        continue
                    raise KafkaException(err)
                eof.pop(msg.partition(), None)
                out[msg.partition()].append(
                    Out(msg.partition(), msg.offset(), msg.key(), msg.value(),
                        tuple(msg.headers() or ()))
                )
            if len(eof) == partitions:
                ends = {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in range(partitions)
                }
                if all(eof[p] >= ends[p] for p in range(partitions)):
                    return out
        raise AssertionError(f"could not read {topic} to its end (eof {eof})")
    finally:
        consumer.close()


def write_code(tmp: Path, name: str, code: str) -> Path:
    path = tmp / f"{name}.py"
    path.write_text(code)
    return path
