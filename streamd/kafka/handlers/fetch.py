"""Fetch, ListOffsets and OffsetForLeaderEpoch: reading the logs back.

Fetch answers whole batches straight from segment bytes, never beyond the high watermark. It
long-polls: when fewer than ``min_bytes`` are ready it waits on the partitions' append waiters
until data arrives or ``max_wait`` passes. The first partition with data may exceed the size
limits by one batch (KIP-74) so that a large batch can never stall a consumer. Offsets below the
local log start are handed to the tiering layer's remote reader when one is wired in.
Fetch sessions (KIP-227) are not kept: every response is a full one with session id 0, which
clients treat as "sessions unsupported".
Authorization: Fetch needs READ on each topic, ListOffsets and OffsetForLeaderEpoch DESCRIBE;
a refused topic's partitions answer TOPIC_AUTHORIZATION_FAILED.
Isolation (KIP-98): read_committed fetches stop at the last stable offset and carry the aborted
transactions (:mod:`streamd.kafka.isolation`); ListOffsets latest answers the LSO for them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streamd.errors import ErrorCode, StreamdError
from streamd.kafka import codec
from streamd.kafka.apis import api
from streamd.kafka.authz import DESCRIBE, READ, TOPIC, authorize
from streamd.kafka.context import Request
from streamd.kafka.isolation import aborted_transactions, cut_at, local_read_end
from streamd.kafka.zerocopy import FileRecords
from streamd.log.segment import FileSlice

LATEST, EARLIEST, MAX_TIMESTAMP, EARLIEST_LOCAL, LATEST_TIERED = -1, -2, -3, -4, -5
READ_COMMITTED = 1


def _partition_of(ctx: Any, name: str, index: int) -> Any:
    topic = ctx.logs.get(name)
    if topic is None or not 0 <= index < len(topic.partitions):
        return None
    return topic.partitions[index]


async def _read_partition(
    ctx: Any,
    name: str,
    index: int,
    plog: Any,
    offset: int,
    max_bytes: int,
    min_one: bool,
    committed: bool = False,
) -> tuple[dict[str, Any], int]:
    entry: dict[str, Any] = {"partition_index": index}
    if plog is None:
        entry.update(error_code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, high_watermark=-1)
        return entry, 0
    tiering = ctx.tiering
    hw = plog.high_watermark
    lso = plog.last_stable_offset
    start = plog.log_start_offset
    if tiering is not None:
        start = tiering.earliest_offset(name, index, plog)
    entry.update(high_watermark=hw, last_stable_offset=lso, log_start_offset=start)
    if offset < start or offset > hw:
        entry["error_code"] = ErrorCode.OFFSET_OUT_OF_RANGE
        return entry, 0
    entry["error_code"] = ErrorCode.NONE
    limit = lso if committed else hw
    if offset >= limit:
        return entry, 0
    try:
        if offset < plog.log_start_offset:
            data = await tiering.read(name, index, offset, max_bytes, min_one)
            if committed:
                data, end = cut_at(data, limit)
                entry["aborted_transactions"] = await aborted_transactions(
                    tiering, name, index, plog, offset, end
                )
        else:
            # A local record set stays a file range until the response is final (see
            # _materialize): a long poll may read a partition several times.
            piece = plog.read(offset, max_bytes, min_one=min_one, upto=limit)
            if piece is not None:
                entry["records"] = piece
                if committed:
                    end = local_read_end(plog, offset, limit)
                    entry["aborted_transactions"] = await aborted_transactions(
                        tiering, name, index, plog, offset, end
                    )
                return entry, piece.length
            data = b""
    except StreamdError as exc:
        entry["error_code"] = exc.code
        return entry, 0
    if data:
        entry["records"] = data
    return entry, len(data)


def _materialize(entry: dict[str, Any], zero_copy: bool) -> None:
    """Turn a local record set (a file range) into what the response carries: a
    :class:`FileRecords` sent with sendfile when the connection allows and the set is large,
    else its bytes."""
    piece = entry.get("records")
    if not isinstance(piece, FileSlice):
        return
    try:
        if zero_copy and piece.length >= codec.SCATTER_MIN:
            entry["records"] = FileRecords(piece)
        else:
            entry["records"] = piece.read_bytes()
    except (OSError, StreamdError) as exc:
        del entry["records"]
        entry["error_code"] = getattr(exc, "code", ErrorCode.KAFKA_STORAGE_ERROR)


@api(1, "Fetch", 4, 12)
async def fetch(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    body = req.body
    deadline = time.monotonic() + codec.ms(body.max_wait) / 1000
    min_bytes = body.min_bytes
    response_max = body.max_bytes if req.version >= 3 else 2**31 - 1
    committed = getattr(body, "isolation_level", 0) == READ_COMMITTED
    denied = {t.topic for t in body.topics if not authorize(req, READ, TOPIC, t.topic)}
    wanted = [
        (
            t.topic,
            p.partition,
            p.fetch_offset,
            p.partition_max_bytes,
            None if t.topic in denied else _partition_of(ctx, t.topic, p.partition),
        )
        for t in body.topics
        for p in t.partitions
    ]
    # A long poll re-evaluates after every append; a partition whose high watermark has not
    # moved (and whose size budget is the same) gives the same answer, so it is not read again.
    previous: dict[int, tuple[tuple[int, int, bool], dict[str, Any], int]] = {}
    while True:
        remaining = response_max
        total = 0
        entries = []
        for i, (name, index, offset, pmax, plog) in enumerate(wanted):
            if name in denied:
                entries.append((name, _denied(index)))
                continue
            limit = min(pmax, remaining)
            watermark = -1
            if plog is not None:
                watermark = plog.last_stable_offset if committed else plog.high_watermark
            stamp = (watermark, limit, total == 0)
            cached = previous.get(i)
            if cached is not None and cached[0] == stamp:
                entry, size = cached[1], cached[2]
            else:
                entry, size = await _read_partition(
                    ctx, name, index, plog, offset, limit, (total == 0), committed
                )
                previous[i] = (stamp, entry, size)
            entries.append((name, entry))
            total += size
            remaining = max(0, remaining - size)
        left = deadline - time.monotonic()
        errors = any(e["error_code"] for _, e in entries)
        if total >= min_bytes or left <= 0 or errors:
            break
        await ctx.waiters.wait([(w[0], w[1]) for w in wanted if w[4] is not None], left)
    if ctx.metrics is not None:
        ctx.metrics.fetched_bytes += total
    responses: list[dict[str, Any]] = []
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for name, entry in entries:
        _materialize(entry, req.zero_copy)
        parts = by_topic.get(name)
        if parts is None:
            parts = by_topic[name] = []
            responses.append({"topic": name, "partitions": parts})
        parts.append(entry)
    return {"error_code": ErrorCode.NONE, "session_id": 0, "responses": responses}


def _denied(index: int) -> dict[str, Any]:
    return {
        "partition_index": index,
        "error_code": ErrorCode.TOPIC_AUTHORIZATION_FAILED,
        "high_watermark": -1,
    }


@api(2, "ListOffsets", 1, 9)
async def list_offsets(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    isolation = getattr(req.body, "isolation_level", 0)
    topics = []
    for t in req.body.topics:
        parts = []
        allowed = authorize(req, DESCRIBE, TOPIC, t.name)
        for p in t.partitions:
            entry: dict[str, Any] = {"partition_index": p.partition_index, "leader_epoch": 0}
            parts.append(entry)
            if not allowed:
                entry["error_code"] = ErrorCode.TOPIC_AUTHORIZATION_FAILED
                continue
            plog = _partition_of(ctx, t.name, p.partition_index)
            if plog is None:
                entry["error_code"] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                continue
            try:
                offset, ts = await _list_offset(ctx, t.name, p.partition_index, plog, p.timestamp)
                if p.timestamp == LATEST and isolation == READ_COMMITTED:
                    offset = plog.last_stable_offset
            except StreamdError as exc:
                entry["error_code"] = exc.code
                continue
            entry.update(error_code=ErrorCode.NONE, offset=offset, timestamp=ts)
        topics.append({"name": t.name, "partitions": parts})
    return {"topics": topics}


async def _list_offset(ctx: Any, name: str, index: int, plog: Any, ts: int) -> tuple[int, int]:
    tiering = ctx.tiering
    if ts == LATEST:
        return plog.high_watermark, -1
    if ts == EARLIEST:
        if tiering is not None:
            return tiering.earliest_offset(name, index, plog), -1
        return plog.log_start_offset, -1
    if ts == EARLIEST_LOCAL:
        return plog.log_start_offset, -1
    if ts == LATEST_TIERED:
        if tiering is not None:
            return tiering.latest_tiered_offset(name, index), -1
        return -1, -1
    if ts == MAX_TIMESTAMP:
        found = await asyncio.to_thread(plog.max_timestamp_offset)
        return found if found is not None else (-1, -1)
    if ts < 0:
        raise StreamdError(f"invalid timestamp {ts}", code=ErrorCode.INVALID_REQUEST)
    if tiering is not None:
        found = await tiering.offset_for_timestamp(name, index, plog, ts)
    else:
        found = await asyncio.to_thread(plog.offset_for_timestamp, ts)
    if found is None:
        return -1, -1
    offset, found_ts = found
    return offset, found_ts


@api(23, "OffsetForLeaderEpoch", 2, 4)
async def offset_for_leader_epoch(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    topics = []
    for t in req.body.topics:
        parts = []
        allowed = authorize(req, DESCRIBE, TOPIC, t.topic)
        for p in t.partitions:
            plog = _partition_of(ctx, t.topic, p.partition)
            if not allowed:
                parts.append(
                    {"partition": p.partition, "error_code": ErrorCode.TOPIC_AUTHORIZATION_FAILED}
                )
            elif plog is None:
                parts.append(
                    {"partition": p.partition, "error_code": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
                )
            elif p.leader_epoch > 0:
                parts.append({"partition": p.partition, "error_code": ErrorCode.NONE})
            else:
                parts.append(
                    {
                        "partition": p.partition,
                        "error_code": ErrorCode.NONE,
                        "leader_epoch": 0,
                        "end_offset": plog.log_end_offset,
                    }
                )
        topics.append({"topic": t.topic, "partitions": parts})
    return {"topics": topics}
