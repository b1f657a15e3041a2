"""Transactions on the wire: AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, TxnOffsetCommit,
DescribeTransactions, ListTransactions and DescribeProducers (InitProducerId lives with the
idempotent producer in :mod:`streamd.kafka.handlers.producer`).

Requests are translated into calls on ``ctx.txn`` (a
:class:`streamd.txn.service.TransactionService`); nothing here holds transaction state.
Versions are those of clients speaking transaction protocol version 1 (no KIP-890 part 2
epoch bump per transaction: streamd does not advertise the ``transaction.version`` feature, so
Java 4.x clients stay on it too). PRODUCER_FENCED is answered as INVALID_PRODUCER_EPOCH to
request versions older than KIP-588's, as Kafka does.

Authorization, as Kafka checks it: WRITE on the TRANSACTIONAL_ID for every transactional
request; WRITE on each topic added; READ on the group for AddOffsetsToTxn and TxnOffsetCommit
and READ on each committed topic; DESCRIBE on the TRANSACTIONAL_ID for DescribeTransactions
and ListTransactions (unauthorized ids are left out of a listing); READ on the topic for
DescribeProducers.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from streamd.errors import ErrorCode
from streamd.kafka.apis import api
from streamd.kafka.authz import (
    DESCRIBE,
    GROUP,
    READ,
    TOPIC,
    TRANSACTIONAL_ID,
    WRITE,
    authorize,
)
from streamd.kafka.context import Request
from streamd.tiering.readreplica import ReadReplicaTopic, refusal
from streamd.txn.model import PendingOffset

E = ErrorCode
NO_TIME = datetime.datetime.fromtimestamp(-0.001, datetime.UTC)
"""-1 on the wire: "no transaction started" (the codec reads negative ints as null)."""


def _time(ms: int) -> Any:
    return NO_TIME if ms < 0 else ms


def _fenced(error: ErrorCode, version: int, since: int) -> ErrorCode:
    """KIP-588: versions below ``since`` do not know PRODUCER_FENCED."""
    if error == E.PRODUCER_FENCED and version < since:
        return E.INVALID_PRODUCER_EPOCH
    return error


def _partition_exists(ctx: Any, topic: str, partition: int) -> bool:
    t = ctx.logs.get(topic)
    return t is not None and 0 <= partition < len(t.partitions)


def _read_replica(ctx: Any, topic: str) -> bool:
    t = ctx.logs.get(topic)
    return t is not None and refusal(t) is not None


@api(24, "AddPartitionsToTxn", 0, 3)
async def add_partitions_to_txn(req: Request) -> dict[str, Any]:
    ctx, body = req.ctx, req.body
    tid = body.v3_and_below_transactional_id
    wanted = [(t.name, p) for t in body.v3_and_below_topics for p in t.partitions]
    errors: dict[tuple[str, int], ErrorCode] = {}
    if not authorize(req, WRITE, TRANSACTIONAL_ID, tid):
        errors = dict.fromkeys(wanted, E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    else:
        allowed = {name for name, _ in wanted if authorize(req, WRITE, TOPIC, name)}
        for name, p in wanted:
            if name not in allowed:
                errors[(name, p)] = E.TOPIC_AUTHORIZATION_FAILED
            elif not _partition_exists(ctx, name, p):
                errors[(name, p)] = E.UNKNOWN_TOPIC_OR_PARTITION
            elif _read_replica(ctx, name):
                errors[(name, p)] = ReadReplicaTopic.code  # never a marker in a replica
        if errors:
            for tp in wanted:
                errors.setdefault(tp, E.OPERATION_NOT_ATTEMPTED)
        else:
            error = E.COORDINATOR_NOT_AVAILABLE
            if ctx.txn is not None:
                error = await ctx.txn.add_partitions(
                    tid, body.v3_and_below_producer_id, body.v3_and_below_producer_epoch, wanted
                )
            errors = dict.fromkeys(wanted, _fenced(error, req.version, 2))
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for (name, p), code in errors.items():
        by_topic.setdefault(name, []).append({"partition_index": p, "partition_error_code": code})
    return {
        "results_by_topic_v3_and_below": [
            {"name": name, "results_by_partition": parts} for name, parts in by_topic.items()
        ]
    }


@api(25, "AddOffsetsToTxn", 0, 4)
async def add_offsets_to_txn(req: Request) -> dict[str, Any]:
    ctx, body = req.ctx, req.body
    if not authorize(req, WRITE, TRANSACTIONAL_ID, body.transactional_id):
        return {"error_code": E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}
    if not authorize(req, READ, GROUP, body.group_id):
        return {"error_code": E.GROUP_AUTHORIZATION_FAILED}
    if ctx.txn is None:
        return {"error_code": E.COORDINATOR_NOT_AVAILABLE}
    error = await ctx.txn.add_group(
        body.transactional_id, body.producer_id, body.producer_epoch, body.group_id
    )
    return {"error_code": _fenced(error, req.version, 2)}


@api(26, "EndTxn", 0, 4)
async def end_txn(req: Request) -> dict[str, Any]:
    ctx, body = req.ctx, req.body
    if not authorize(req, WRITE, TRANSACTIONAL_ID, body.transactional_id):
        return {"error_code": E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}
    if ctx.txn is None:
        return {"error_code": E.COORDINATOR_NOT_AVAILABLE}
    error = await ctx.txn.end_txn(
        body.transactional_id, body.producer_id, body.producer_epoch, bool(body.committed)
    )
    return {"error_code": _fenced(error, req.version, 2)}


@api(28, "TxnOffsetCommit", 0, 4)
async def txn_offset_commit(req: Request) -> dict[str, Any]:
    ctx, body = req.ctx, req.body
    max_metadata = ctx.config["offset.metadata.max.bytes"]
    codes: dict[tuple[str, int], ErrorCode] = {}
    offsets: list[PendingOffset] = []
    request_error = E.NONE
    if not authorize(req, WRITE, TRANSACTIONAL_ID, body.transactional_id):
        request_error = E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    elif not authorize(req, READ, GROUP, body.group_id):
        request_error = E.GROUP_AUTHORIZATION_FAILED
    elif ctx.txn is None:
        request_error = E.COORDINATOR_NOT_AVAILABLE
    for t in body.topics:
        topic_ok = request_error == E.NONE and authorize(req, READ, TOPIC, t.name)
        for p in t.partitions:
            key = (t.name, p.partition_index)
            metadata = p.committed_metadata or ""
            if request_error != E.NONE:
                codes[key] = request_error
            elif not topic_ok:
                codes[key] = E.TOPIC_AUTHORIZATION_FAILED
            elif not _partition_exists(ctx, t.name, p.partition_index):
                codes[key] = E.UNKNOWN_TOPIC_OR_PARTITION
            elif len(metadata.encode()) > max_metadata:
                codes[key] = E.OFFSET_METADATA_TOO_LARGE
            else:
                offsets.append(
                    PendingOffset(
                        body.group_id,
                        t.name,
                        p.partition_index,
                        p.committed_offset,
                        getattr(p, "committed_leader_epoch", -1),
                        metadata,
                    )
                )
    if offsets and ctx.txn is not None:
        member = (
            getattr(body, "generation_id", -1),
            getattr(body, "member_id", ""),
            getattr(body, "group_instance_id", None),
        )
        error = await ctx.txn.txn_offset_commit(
            body.transactional_id, body.producer_id, body.producer_epoch, body.group_id,
            member, offsets,
        )
        error = _fenced(error, req.version, 3)
        for o in offsets:
            codes[(o.topic, o.partition)] = error
    return {
        "topics": [
            {
                "name": t.name,
                "partitions": [
                    {"partition_index": p.partition_index,
                     "error_code": codes[(t.name, p.partition_index)]}
                    for p in t.partitions
                ],
            }
            for t in body.topics
        ]
    }


@api(65, "DescribeTransactions", 0, 0)
async def describe_transactions(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    states = []
    for tid in req.body.transactional_ids:
        entry: dict[str, Any] = {"transactional_id": tid, "producer_id": -1, "producer_epoch": -1,
                                 "transaction_start_time": NO_TIME}
        states.append(entry)
        if not authorize(req, DESCRIBE, TRANSACTIONAL_ID, tid):
            entry["error_code"] = E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            continue
        if ctx.txn is None:
            entry["error_code"] = E.COORDINATOR_NOT_AVAILABLE
            continue
        if not tid:
            entry["error_code"] = E.INVALID_REQUEST
            continue
        d = ctx.txn.describe(tid)
        if d is None:
            entry["error_code"] = E.TRANSACTIONAL_ID_NOT_FOUND
            continue
        topics: dict[str, list[int]] = {}
        for topic, partition in d.partitions:
            if authorize(req, DESCRIBE, TOPIC, topic):
                topics.setdefault(topic, []).append(partition)
        entry.update(
            error_code=E.NONE,
            transaction_state=d.state,
            transaction_timeout=d.timeout_ms,
            transaction_start_time=_time(d.start_ms),
            producer_id=d.producer_id,
            producer_epoch=d.producer_epoch,
            topics=[{"topic": t, "partitions": ps} for t, ps in topics.items()],
        )
    return {"transaction_states": states}


@api(66, "ListTransactions", 0, 2)
async def list_transactions(req: Request) -> dict[str, Any]:
    ctx, body = req.ctx, req.body
    if ctx.txn is None:
        return {"error_code": E.COORDINATOR_NOT_AVAILABLE}
    try:
        found, unknown = ctx.txn.list_transactions(
            states=body.state_filters,
            producer_ids=body.producer_id_filters,
            min_duration_ms=getattr(body, "duration_filter", -1),
            pattern=getattr(body, "transactional_id_pattern", None),
        )
    except re.error:
        return {"error_code": E.INVALID_REQUEST}
    return {
        "error_code": E.NONE,
        "unknown_state_filters": unknown,
        "transaction_states": [
            {"transactional_id": d.transactional_id, "producer_id": d.producer_id,
             "transaction_state": d.state}
            for d in found
            if authorize(req, DESCRIBE, TRANSACTIONAL_ID, d.transactional_id)
        ],
    }


@api(61, "DescribeProducers", 0, 0)
async def describe_producers(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    topics = []
    for t in req.body.topics:
        allowed = authorize(req, READ, TOPIC, t.name)
        topic = ctx.logs.get(t.name)
        parts = []
        for index in t.partition_indexes:
            entry: dict[str, Any] = {"partition_index": index, "error_code": E.NONE}
            parts.append(entry)
            if not allowed:
                entry["error_code"] = E.TOPIC_AUTHORIZATION_FAILED
            elif topic is None or not 0 <= index < len(topic.partitions):
                entry["error_code"] = E.UNKNOWN_TOPIC_OR_PARTITION
            else:
                entry["active_producers"] = _producers(topic.partitions[index])
        topics.append({"name": t.name, "partitions": parts})
    return {"topics": topics}


def _producers(plog: Any) -> list[dict[str, Any]]:
    table = plog.producers
    return [
        {
            "producer_id": pid,
            "producer_epoch": entry.epoch,
            "last_sequence": entry.last_seq,
            "last_timestamp": -1,
            "coordinator_epoch": -1,
            "current_txn_start_offset": table.ongoing.get(pid, -1),
        }
        for pid, entry in sorted(table.producers.items())
    ]
