"""Produce: hand each partition's record batches to its log and answer once they are durable.

Partitions of one request are appended concurrently so that their group-commit fsyncs overlap.
The payload stays bytes from the socket to the file: the log validates headers and patches
offsets in place, and no record is decoded. With acks=0 nothing is answered.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streamd.errors import ErrorCode, StreamdError
from streamd.kafka.apis import api
from streamd.kafka.context import Request


async def _append(ctx: Any, topic: Any, name: str, index: int, records: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": index, "base_offset": -1}
    if topic is None or not 0 <= index < len(topic.partitions):
        entry["error_code"] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        return entry
    if not records:
        entry["error_code"] = ErrorCode.CORRUPT_MESSAGE
        entry["error_message"] = "empty record set"
        return entry
    plog = topic.partitions[index]
    try:
        result = await plog.append(records, now_ms=int(time.time() * 1000))
    except StreamdError as exc:
        entry["error_code"] = exc.code
        entry["error_message"] = str(exc)
        if exc.code == ErrorCode.INVALID_RECORD:
            entry["record_errors"] = [{"batch_index": 0, "batch_index_error_message": str(exc)}]
        return entry
    ctx.waiters.notify(name, index)
    entry.update(
        error_code=ErrorCode.NONE,
        base_offset=result.base_offset,
        log_append_time=result.log_append_time_ms,
        log_start_offset=result.log_start_offset,
    )
    if ctx.metrics is not None:
        ctx.metrics.produced_bytes += len(records)
    return entry


@api(0, "Produce", 3, 9)
async def produce(req: Request) -> dict[str, Any] | None:
    ctx = req.ctx
    body = req.body
    acks = body.acks
    jobs = []
    names = []
    for t in body.topic_data:
        topic = ctx.logs.get(t.name)
        names.append((t.name, len(t.partition_data)))
        for p in t.partition_data:
            if acks not in (0, 1, -1):
                jobs.append(_fail(p.index, ErrorCode.INVALID_REQUIRED_ACKS))
            elif body.transactional_id is not None:
                jobs.append(_fail(p.index, ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED))
            else:
                jobs.append(_append(ctx, topic, t.name, p.index, p.records))
    if len(jobs) == 1:
        results = [await jobs[0]]
    else:
        results = list(await asyncio.gather(*jobs))
    if acks == 0:
        return None
    responses = []
    pos = 0
    for name, count in names:
        responses.append({"name": name, "partition_responses": results[pos : pos + count]})
        pos += count
    return {"responses": responses}


async def _fail(index: int, code: ErrorCode) -> dict[str, Any]:
    return {"index": index, "error_code": code, "base_offset": -1}
