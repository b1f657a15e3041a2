"""Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DeleteRecords.

Authorization (Kafka's): CreateTopics needs CREATE on the cluster or the topic, DeleteTopics
and DeleteRecords DELETE on the topic, CreatePartitions ALTER on the topic; a refusal is
TOPIC_AUTHORIZATION_FAILED for that topic only.
Internal topics (``__consumer_offsets``) belong to the broker: creating one answers
TOPIC_ALREADY_EXISTS (it always exists), deleting it or adding partitions INVALID_REQUEST with
"internal topic" (KRaft Kafka lets an admin delete it, which only breaks the coordinator; here it
is derived from the offset store, so there is nothing to gain). CreateTopics v0 has no
validate_only flag; DeleteTopics v0 is v1 without the throttle time.

Every outcome is per topic: a topic that fails (a limit, a name, the disk) does not change the
answer for the others, and no message names a server path. Every limit is checked before
anything is written (``LogManager.check_new_topic``): more partitions than the broker holds
(``log.max_partitions``) is POLICY_VIOLATION, a bad count for one topic INVALID_PARTITIONS.
Creation runs off the event loop (``create_topic_async``), one topic after the other, so the
broker limit also holds across the topics of one request. A name given twice in one request
is INVALID_REQUEST for both, as in Kafka.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from streamd.errors import ErrorCode, StreamdError
from streamd.kafka.apis import api
from streamd.kafka.authz import ALTER, DELETE, TOPIC, authorize, may_create_topic
from streamd.kafka.context import Request
from streamd.kafka.handlers.configs import describe_topic_configs
from streamd.kafka.handlers.meta import create_topic
from streamd.kafka.offsets_topic import is_internal
from streamd.log.names import validate_topic_name
from streamd.tiering.readreplica import CONFIG as READREPLICA
from streamd.tiering.readreplica import ReadReplicaTopic, refusal


def _error(exc: StreamdError) -> dict[str, Any]:
    return {"error_code": exc.code, "error_message": str(exc)}


DENIED = {
    "error_code": ErrorCode.TOPIC_AUTHORIZATION_FAILED,
    "error_message": "topic authorization failed",
}


INTERNAL = {"error_code": ErrorCode.INVALID_REQUEST, "error_message": "internal topic"}


@api(19, "CreateTopics", 0, 7)
async def create_topics(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    validate_only = getattr(req.body, "validate_only", False)
    results = []
    names = Counter(t.name for t in req.body.topics)
    for t in req.body.topics:
        entry: dict[str, Any] = {"name": t.name, "error_code": ErrorCode.NONE}
        try:
            results.append(entry)
            if names[t.name] > 1:
                raise StreamdError(
                    f"topic {t.name!r} is named more than once in the request",
                    code=ErrorCode.INVALID_REQUEST,
                )
            if not may_create_topic(req, t.name):
                entry.update(DENIED)
                continue
            validate_topic_name(t.name)
            if any(c.name == READREPLICA for c in t.configs):
                await _create_replica(req, t, entry, validate_only)
                continue
            count = t.num_partitions
            if t.assignments:
                if count != -1:
                    raise StreamdError(
                        "give either num_partitions or assignments",
                        code=ErrorCode.INVALID_REQUEST,
                    )
                count = len(t.assignments)
            if count == -1:
                count = ctx.config["default_partitions"]
            if count < 1:
                raise StreamdError(
                    f"num_partitions must be >= 1, got {count}", code=ErrorCode.INVALID_PARTITIONS
                )
            if t.replication_factor not in (-1, 1):
                raise StreamdError(
                    f"replication factor {t.replication_factor} > 1 broker available",
                    code=ErrorCode.INVALID_REPLICATION_FACTOR,
                )
            overrides = {c.name: c.value for c in t.configs}
            for name, value in overrides.items():
                if value is None:
                    raise StreamdError(f"config {name} has no value", code=ErrorCode.INVALID_CONFIG)
            ctx.logs.check_new_topic(t.name, count, overrides)
            if validate_only:
                topic = None
            else:
                topic = await create_topic(ctx, t.name, count, overrides)
            entry.update(num_partitions=count, replication_factor=1)
            if topic is not None:
                entry["topic_id"] = topic.topic_id
                entry["configs"] = [
                    {
                        "name": c["name"],
                        "value": c["value"],
                        "read_only": False,
                        "config_source": c["config_source"],
                        "is_sensitive": False,
                    }
                    for c in describe_topic_configs(ctx, topic, None)
                ]
        except StreamdError as exc:
            entry.update(_error(exc))
        except OSError as exc:
            entry.update(error_code=ErrorCode.KAFKA_STORAGE_ERROR, error_message=exc.strerror)
    return {"topics": results}


async def _create_replica(req: Request, t: Any, entry: dict[str, Any], validate_only: bool) -> None:
    """CreateTopics of a read replica: partition count and configs come from the origin's
    archive (:mod:`streamd.tiering.readreplica`); a count given explicitly must match it."""
    ctx = req.ctx
    if ctx.replicas is None:
        raise StreamdError("read replicas are not available", code=ErrorCode.INVALID_CONFIG)
    if ctx.logs.get(t.name) is not None:
        raise StreamdError(f"topic {t.name!r} already exists", code=ErrorCode.TOPIC_ALREADY_EXISTS)
    if t.replication_factor not in (-1, 1):
        raise StreamdError(
            f"replication factor {t.replication_factor} > 1 broker available",
            code=ErrorCode.INVALID_REPLICATION_FACTOR,
        )
    requested = len(t.assignments) if t.assignments else t.num_partitions
    overrides = {c.name: c.value for c in t.configs}
    topic, count = await ctx.replicas.create(
        t.name, None if requested == -1 else requested, overrides, validate_only=validate_only
    )
    entry.update(num_partitions=count, replication_factor=1)
    if topic is not None:
        entry["topic_id"] = topic.topic_id
        entry["configs"] = [
            {
                "name": c["name"],
                "value": c["value"],
                "read_only": False,
                "config_source": c["config_source"],
                "is_sensitive": False,
            }
            for c in describe_topic_configs(ctx, topic, None)
        ]


@api(20, "DeleteTopics", 0, 6)
async def delete_topics(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    body = req.body
    if req.version >= 6:
        wanted = [(t.name, t.topic_id) for t in body.topics]
    else:
        wanted = [(name, None) for name in body.topic_names]
    by_id = {t.topic_id: t for t in ctx.logs.topics().values()}
    responses = []
    for name, topic_id in wanted:
        entry: dict[str, Any] = {"name": name, "error_code": ErrorCode.NONE}
        responses.append(entry)
        topic = ctx.logs.get(name) if name is not None else by_id.get(topic_id)
        if not authorize(req, DELETE, TOPIC, topic.name if topic is not None else name or ""):
            entry.update(DENIED)
            continue
        if topic is None:
            code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION if name else ErrorCode.UNKNOWN_TOPIC_ID
            entry.update(error_code=code, error_message="no such topic")
            continue
        entry.update(name=topic.name, topic_id=topic.topic_id)
        if is_internal(topic.name):
            entry.update(INTERNAL)
            continue
        try:
            if ctx.tiering is not None:
                await ctx.tiering.on_topic_deleted(topic)
            await ctx.logs.delete_topic(topic.name)
            if ctx.groups is not None and hasattr(ctx.groups, "on_topic_deleted"):
                ctx.groups.on_topic_deleted(topic.name)
        except StreamdError as exc:
            entry.update(_error(exc))
    return {"responses": responses}


@api(37, "CreatePartitions", 0, 3)
async def create_partitions(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    results = []
    for t in req.body.topics:
        entry: dict[str, Any] = {"name": t.name, "error_code": ErrorCode.NONE}
        results.append(entry)
        if not authorize(req, ALTER, TOPIC, t.name):
            entry.update(DENIED)
            continue
        topic = ctx.logs.get(t.name)
        if topic is None:
            entry.update(
                error_code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, error_message="no such topic"
            )
            continue
        if is_internal(t.name):
            entry.update(INTERNAL)
            continue
        replica = refusal(topic)
        if replica is not None:
            entry.update(error_code=ErrorCode.INVALID_TOPIC_EXCEPTION, error_message=replica)
            continue
        current = len(topic.partitions)
        if t.count <= current:
            entry.update(
                error_code=ErrorCode.INVALID_PARTITIONS,
                error_message=f"topic has {current} partitions; new count must be larger",
            )
            continue
        try:
            if req.body.validate_only:
                ctx.logs.check_growth(t.name, t.count)
                continue
            await ctx.logs.add_partitions_async(t.name, t.count)
            if ctx.tiering is not None:
                await ctx.tiering.on_topic_changed(ctx.logs.get(t.name))
        except StreamdError as exc:
            entry.update(_error(exc))
    return {"results": results}


@api(21, "DeleteRecords", 0, 2)
async def delete_records(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    topics = []
    for t in req.body.topics:
        parts = []
        topic = ctx.logs.get(t.name)
        allowed = authorize(req, DELETE, TOPIC, t.name)
        for p in t.partitions:
            entry: dict[str, Any] = {"partition_index": p.partition_index, "low_watermark": -1}
            parts.append(entry)
            if not allowed:
                entry["error_code"] = ErrorCode.TOPIC_AUTHORIZATION_FAILED
                continue
            if topic is None or not 0 <= p.partition_index < len(topic.partitions):
                entry["error_code"] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                continue
            if refusal(topic) is not None:  # DeleteRecords answers carry no message
                entry["error_code"] = ReadReplicaTopic.code
                continue
            try:
                plog = topic.partitions[p.partition_index]
                offset = plog.high_watermark if p.offset == -1 else p.offset
                if 0 <= offset <= plog.high_watermark and ctx.tiering is not None:
                    # The archive stops serving the deleted offsets first (KIP-405); if its
                    # manifest cannot be stored, nothing is deleted.
                    await ctx.tiering.delete_records(t.name, p.partition_index, offset)
                low = plog.delete_records_before(offset)
                if ctx.tiering is not None:  # the partition's start includes the archive
                    low = ctx.tiering.earliest_offset(t.name, p.partition_index, plog)
                entry["low_watermark"] = low
                entry["error_code"] = ErrorCode.NONE
            except StreamdError as exc:
                entry["error_code"] = exc.code
        topics.append({"name": t.name, "partitions": parts})
    return {"topics": topics}
