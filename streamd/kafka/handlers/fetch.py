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

Bounds, as Kafka's: a partition named several times in one request is answered once, at its
first position, with the offset and size of its last mention (Kafka builds a map); a response
holds at most the request's ``max_bytes`` and the broker's ``fetch.max.bytes`` (55 MiB), one
batch more under KIP-74. Record sets of 64 KiB or more go out with sendfile when the connection
allows and its descriptor budget is not spent; the rest are read into the response, off the
event loop when they add up to 64 KiB or more (a TLS consumer's fetches, old data not in the
page cache).

Old versions (Kafka 3.9 still serves them): Fetch v0-v3 answer message format v0 (v0-v1) or
v1 (v2-v3), down-converted from the stored v2 batches after the read (never sendfile), unless
the topic sets ``message.downconversion.enable=false``: then UNSUPPORTED_VERSION, as in Kafka.
ListOffsets v0 answers the old offsets array (see :func:`_legacy_offsets`).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Any

from streamd.errors import ErrorCode, StreamdError
from streamd.kafka import codec
from streamd.kafka.apis import api
from streamd.kafka.authz import DESCRIBE, READ, TOPIC, authorize
from streamd.kafka.context import Request
from streamd.kafka.isolation import aborted_transactions, cut_at, local_read_end
from streamd.kafka.legacy.records import down_convert
from streamd.kafka.zerocopy import FileBudget, FileRecords
from streamd.log.segment import FileSlice

READ_ON_LOOP_MAX = codec.SCATTER_MIN
"""Record sets adding up to less than this are read on the event loop (a thread hop costs more)."""

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
    ready: int = 0,
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
            # ``ready``: an archived range still arriving is answered once the bytes the
            # fetch still needs for min_bytes are here, not all of max_bytes.
            data = await tiering.read(name, index, offset, max_bytes, min_one, ready_bytes=ready)
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


def _storage_error(entry: dict[str, Any], exc: Exception) -> None:
    entry.pop("records", None)
    entry["error_code"] = getattr(exc, "code", ErrorCode.KAFKA_STORAGE_ERROR)


async def _materialize(
    entries: list[tuple[str, dict[str, Any]]], budget: FileBudget | None, pool: Executor
) -> None:
    """Turn local record sets (file ranges) into what the response carries: a
    :class:`FileRecords` sent with sendfile when the connection allows (``budget``), the set is
    large and the descriptor budget holds, else the bytes."""
    reads: list[tuple[dict[str, Any], FileRecords]] = []
    for _, entry in entries:
        piece = entry.get("records")
        if not isinstance(piece, FileSlice):
            continue
        try:
            if budget is not None and piece.length >= codec.SCATTER_MIN:
                pinned = FileRecords.pin(piece, budget)
                if pinned is not None:
                    entry["records"] = pinned
                    continue
            # Its own descriptor: the segment may be closed while a worker thread reads.
            reads.append((entry, FileRecords(piece)))
        except (OSError, StreamdError) as exc:
            _storage_error(entry, exc)
    if not reads:
        return
    if sum(records.length for _, records in reads) < READ_ON_LOOP_MAX:
        _read_all(reads)
    else:
        await asyncio.get_running_loop().run_in_executor(pool, _read_all, reads)


def _read_all(reads: list[tuple[dict[str, Any], FileRecords]]) -> None:
    for entry, records in reads:
        try:
            entry["records"] = records.read()
        except (OSError, StreamdError) as exc:
            _storage_error(entry, exc)
        finally:
            records.close()


@api(1, "Fetch", 0, 12)
async def fetch(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    body = req.body
    deadline = time.monotonic() + codec.ms(body.max_wait) / 1000
    min_bytes = body.min_bytes
    asked_max = body.max_bytes if req.version >= 3 else 2**31 - 1
    response_max = min(asked_max, ctx.config["fetch.max.bytes"])
    committed = getattr(body, "isolation_level", 0) == READ_COMMITTED
    denied = {t.topic for t in body.topics if not authorize(req, READ, TOPIC, t.topic)}
    asked: dict[tuple[str, int], tuple[int, int]] = {}
    for t in body.topics:
        for p in t.partitions:
            asked[(t.topic, p.partition)] = (p.fetch_offset, p.partition_max_bytes)
    wanted = [
        (
            name,
            index,
            offset,
            pmax,
            None if name in denied else _partition_of(ctx, name, index),
        )
        for (name, index), (offset, pmax) in asked.items()
    ]
    if ctx.tiering is not None:  # archived partitions start their GETs together, not in turn
        for name, index, offset, _pmax, plog in wanted:
            if plog is not None and name not in denied and offset < plog.log_start_offset:
                ctx.tiering.prefetch(name, index, offset)
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
                    ctx, name, index, plog, offset, limit, (total == 0), committed,
                    ready=max(0, min_bytes - total),
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
    if ctx.metrics is not None and total:
        for i, cached in previous.items():
            if cached[2]:
                ctx.metrics.fetched(wanted[i][0], cached[2])
    old_magic = -1 if req.version >= 4 else (0 if req.version < 2 else 1)
    await _materialize(entries, req.files if old_magic < 0 else None, ctx.read_pool)
    responses: list[dict[str, Any]] = []
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for i, (name, entry) in enumerate(entries):
        if old_magic >= 0:
            _down_convert(ctx, name, entry, old_magic, wanted[i][2], wanted[i][3])
        parts = by_topic.get(name)
        if parts is None:
            parts = by_topic[name] = []
            responses.append({"topic": name, "partitions": parts})
        parts.append(entry)
    return {"error_code": ErrorCode.NONE, "session_id": 0, "responses": responses}


def _down_convert(
    ctx: Any, name: str, entry: dict[str, Any], magic: int, offset: int, limit: int
) -> None:
    """Fetch v0-v3: the entry's v2 batches as a message set of ``magic`` (old clients only)."""
    if "records" not in entry:
        return
    data = entry.pop("records", None)
    if not data:
        return
    topic = ctx.logs.get(name)
    if topic is not None and not topic.config.message_downconversion_enable:
        entry["error_code"] = ErrorCode.UNSUPPORTED_VERSION
        return
    try:
        entry["records"] = down_convert(data, magic, offset, limit)
    except StreamdError as exc:
        entry["error_code"] = exc.code


def _denied(index: int) -> dict[str, Any]:
    return {
        "partition_index": index,
        "error_code": ErrorCode.TOPIC_AUTHORIZATION_FAILED,
        "high_watermark": -1,
    }


@api(2, "ListOffsets", 0, 9)
async def list_offsets(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    isolation = getattr(req.body, "isolation_level", 0)
    legacy = req.version == 0
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
            if legacy:
                entry.update(
                    error_code=ErrorCode.NONE,
                    old_style_offsets=_legacy_offsets(
                        ctx, t.name, p.partition_index, plog, p.timestamp, p.max_num_offsets,
                        from_consumer=req.body.replica_id < 0,
                    ),
                )
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


def _legacy_offsets(
    ctx: Any, name: str, index: int, plog: Any, ts: int, max_num: int, *, from_consumer: bool
) -> list[int]:
    """ListOffsets v0: up to ``max_num`` offsets, descending, as Kafka 3.x computes them.

    The candidates are each segment's base offset (not below the log start) stamped with the
    segment's last append time, plus the log end offset stamped now. LATEST (-1) starts from the
    newest candidate, EARLIEST (-2) from the oldest (the log start, the archive included), any
    other timestamp from the newest candidate stamped at or before it; offsets are then taken
    towards older candidates. A consumer never gets an offset above the high watermark: those
    are replaced by the high watermark (Kafka's ``fetchOffsetsBefore``)."""
    start = plog.log_start_offset
    if ctx.tiering is not None:
        start = ctx.tiering.earliest_offset(name, index, plog)
    segments = plog.segments
    candidates = [(max(seg.base_offset, start), seg.last_append_ms) for seg in segments]
    if segments and segments[-1].size > 0:
        candidates.append((plog.log_end_offset, int(time.time() * 1000)))
    if not candidates:
        candidates = [(start, 0)]
    if ts == LATEST:
        pick = len(candidates) - 1
    elif ts == EARLIEST:
        candidates[0] = (start, candidates[0][1])
        pick = 0
    else:
        pick = len(candidates) - 1
        while pick >= 0 and candidates[pick][1] > ts:
            pick -= 1
    offsets = sorted(
        (candidates[i][0] for i in range(pick, max(pick - max(max_num, 0), -1), -1)),
        reverse=True,
    )
    if from_consumer:
        hw = plog.high_watermark
        if any(o > hw for o in offsets):
            offsets = [hw, *(o for o in offsets if o <= hw)]
    return offsets


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


@api(23, "OffsetForLeaderEpoch", 0, 4)
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
