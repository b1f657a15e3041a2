"""Produce: hand each partition's record batches to its log and answer once they are durable.

Offsets are assigned synchronously, before the handler's first ``await``: the server starts
request handlers in arrival order, so pipelined requests on one connection append in order.
Only the wait for durability is concurrent, so partitions' group-commit fsyncs overlap.
The payload stays bytes from the socket to the file: the log validates headers and patches
offsets in place, and no record is decoded. With acks=0 nothing is answered.
A topic whose ``min.insync.replicas`` exceeds 1 refuses acks=all with NOT_ENOUGH_REPLICAS, as
Kafka does when its in-sync replica set is too small: every partition has one replica here.
Each topic needs WRITE (checked once per topic, before existence, so that a principal without
access learns nothing about the topic): TOPIC_AUTHORIZATION_FAILED otherwise.

Transactional records (the attribute bit of a partition's first batch) need the request's
transactional id with WRITE on it, and the transaction coordinator must have that partition in
the producer's ongoing transaction (KIP-890 part 1 verification: a zombie or late write can never
open a transaction that no marker would end). One header peek per partition, no record work.
Produce v0-v2 carry message format v0/v1: their sets are up-converted to one v2 batch first
(:mod:`streamd.kafka.legacy.records`), the only per-record work, and only on those versions.
Internal topics (``__consumer_offsets``) are written by the broker only: INVALID_TOPIC_EXCEPTION.
So are read replicas (``remote.readreplica``), with a message saying so.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streamd.errors import ErrorCode, StreamdError
from streamd.kafka.apis import api
from streamd.kafka.authz import TOPIC, TRANSACTIONAL_ID, WRITE, authorize
from streamd.kafka.context import Request
from streamd.kafka.legacy.records import up_convert
from streamd.kafka.offsets_topic import is_internal
from streamd.log.batch import HEADER_SIZE, TRANSACTIONAL
from streamd.tiering.readreplica import ReadReplicaTopic, refusal

_ATTRIBUTES_LOW = 22
"""The low byte of a batch's attributes (bytes 21-22, big-endian): holds the TRANSACTIONAL bit."""


def _stage(
    topic: Any, index: int, records: Any, acks: int, old_format: bool = False
) -> tuple[dict[str, Any], Any, Any]:
    """Validate and assign offsets now (synchronously, so pipelined requests keep their order);
    returns the response entry, and the log and result to wait on when it was accepted."""
    entry: dict[str, Any] = {"index": index, "base_offset": -1}
    if topic is None or not 0 <= index < len(topic.partitions):
        entry["error_code"] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        return entry, None, None
    if topic.config.remote_readreplica:
        entry["error_code"] = ReadReplicaTopic.code
        entry["error_message"] = refusal(topic)
        return entry, None, None
    required = topic.config.min_insync_replicas
    if acks == -1 and required > 1:
        entry["error_code"] = ErrorCode.NOT_ENOUGH_REPLICAS
        entry["error_message"] = (
            f"the in-sync replica set (1 replica) is smaller than min.insync.replicas={required}"
        )
        return entry, None, None
    if not records:
        entry["error_code"] = ErrorCode.CORRUPT_MESSAGE
        entry["error_message"] = "empty record set"
        return entry, None, None
    plog = topic.partitions[index]
    try:
        if old_format:
            records = up_convert(records)
        result = plog.stage_append(records, now_ms=int(time.time() * 1000))
    except StreamdError as exc:
        entry["error_code"] = exc.code
        entry["error_message"] = str(exc)
        if exc.code in (ErrorCode.INVALID_RECORD, ErrorCode.INVALID_TIMESTAMP):
            entry["record_errors"] = [{"batch_index": 0, "batch_index_error_message": str(exc)}]
        return entry, None, None
    entry.update(
        error_code=ErrorCode.NONE,
        base_offset=result.base_offset,
        log_append_time=result.log_append_time_ms,
        log_start_offset=result.log_start_offset,
    )
    return entry, plog, result


async def _durable(ctx: Any, name: str, entry: dict[str, Any], plog: Any, result: Any) -> None:
    try:
        await plog.wait_durable(result)
    except StreamdError as exc:
        entry.update(error_code=exc.code, error_message=str(exc), base_offset=-1)
        return
    ctx.waiters.notify(name, entry["index"])


@api(0, "Produce", 0, 9)
async def produce(req: Request) -> dict[str, Any] | None:
    ctx = req.ctx
    body = req.body
    acks = body.acks
    responses = []
    waits = []
    transactional = False
    old_format = req.version < 3
    for t in body.topic_data:
        topic = ctx.logs.get(t.name)
        allowed = authorize(req, WRITE, TOPIC, t.name)
        entries = []
        for p in t.partition_data:
            if not allowed:
                entries.append(_failed(p.index, ErrorCode.TOPIC_AUTHORIZATION_FAILED))
            elif acks not in (0, 1, -1):
                entries.append(_failed(p.index, ErrorCode.INVALID_REQUIRED_ACKS))
            elif not old_format and (
                txn_error := _transaction_error(req, t.name, p.index, p.records)
            ) is not None:
                entries.append(_failed(p.index, txn_error))
            elif is_internal(t.name):
                entries.append(_failed(p.index, ErrorCode.INVALID_TOPIC_EXCEPTION))
            else:
                entry, plog, result = _stage(topic, p.index, p.records, acks, old_format)
                entries.append(entry)
                if plog is not None:
                    if ctx.metrics is not None:
                        ctx.metrics.produced(
                            t.name, len(p.records), result.last_offset - result.base_offset + 1
                        )
                    waits.append(_durable(ctx, t.name, entry, plog, result))
                    transactional = transactional or (
                        not old_format and _is_transactional(p.records)
                    )
        responses.append({"name": t.name, "partition_responses": entries})
    if transactional and ctx.txn is not None:
        waits.append(ctx.txn.durable())  # its AddPartitionsToTxn, before the acknowledgement
    if len(waits) == 1:
        await waits[0]
    elif waits:
        await asyncio.gather(*waits)
    if acks == 0:
        return None
    return {"responses": responses}


def _is_transactional(records: Any) -> bool:
    return bool(
        records and len(records) >= HEADER_SIZE and records[_ATTRIBUTES_LOW] & TRANSACTIONAL
    )


def _transaction_error(req: Request, topic: str, index: int, records: Any) -> ErrorCode | None:
    if not _is_transactional(records):
        return None
    tid = req.body.transactional_id
    if tid is None or not authorize(req, WRITE, TRANSACTIONAL_ID, tid):
        return ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    txn = req.ctx.txn
    if txn is None:
        return ErrorCode.COORDINATOR_NOT_AVAILABLE
    pid = int.from_bytes(records[43:51], "big", signed=True)
    epoch = int.from_bytes(records[51:53], "big", signed=True)
    code = txn.verify_produce(tid, pid, epoch, topic, index)
    return None if code == ErrorCode.NONE else code


def _failed(index: int, code: ErrorCode) -> dict[str, Any]:
    return {"index": index, "error_code": code, "base_offset": -1}
