"""ApiVersions, Metadata and DescribeCluster: what the broker is and what it hosts.

Each client is told the advertised address of the listener it connected to
(:func:`advertised_address`), so an internal and an external listener each keep their clients
on their own network path. Asked for them, Metadata and DescribeCluster answer Kafka's
authorized-operations bitfields (every operation Kafka supports on the resource type when
authorization is off). With authorization on, Metadata lists only the topics the principal
may DESCRIBE; a named topic it may not describe is answered TOPIC_AUTHORIZATION_FAILED whether
or not it exists, and auto-creation needs CREATE on the cluster or on the topic.
"""

from __future__ import annotations

from typing import Any

from streamd.errors import ErrorCode, StreamdError
from streamd.kafka.apis import REGISTRY, api
from streamd.kafka.authz import (
    CLUSTER,
    DESCRIBE,
    NOT_REQUESTED,
    TOPIC,
    authorize,
    authorized_operations,
    may_create_topic,
)
from streamd.kafka.context import Request
from streamd.kafka.offsets_topic import is_internal
from streamd.log.names import validate_topic_name
from streamd.security.acl import CLUSTER_NAME


def api_versions_body(error: ErrorCode = ErrorCode.NONE) -> dict[str, Any]:
    return {
        "error_code": error,
        "api_keys": [
            {"api_key": a.key, "min_version": a.min_version, "max_version": a.max_version}
            for a in sorted(REGISTRY.values(), key=lambda a: a.key)
        ],
    }


@api(18, "ApiVersions", 0, 3)
async def api_versions(req: Request) -> dict[str, Any]:
    return api_versions_body()


def advertised_address(req: Request) -> tuple[str, int]:
    """The host and port this client should use: those of the listener it connected to."""
    listener = req.listener
    if listener is not None:
        return listener.advertised_host, listener.advertised_port
    return req.ctx.advertised_host, req.ctx.advertised_port


def _broker(req: Request) -> dict[str, Any]:
    host, port = advertised_address(req)
    return {"node_id": req.ctx.node_id, "host": host, "port": port}


def topic_metadata(ctx: Any, topic: Any, operations: int = NOT_REQUESTED) -> dict[str, Any]:
    node = ctx.node_id
    return {
        "topic_authorized_operations": operations,
        "error_code": ErrorCode.NONE,
        "name": topic.name,
        "topic_id": topic.topic_id,
        "is_internal": is_internal(topic.name),
        "partitions": [
            {
                "error_code": ErrorCode.NONE,
                "partition_index": i,
                "leader_id": node,
                "leader_epoch": 0,
                "replica_nodes": (node,),
                "isr_nodes": (node,),
                "offline_replicas": (),
            }
            for i in range(len(topic.partitions))
        ],
    }


@api(3, "Metadata", 0, 12)
async def metadata(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    body = req.body
    requested = body.topics
    if requested is None or (req.version == 0 and not requested):
        names = None
    else:
        names = [t.name for t in requested]
    topics = []
    if names is None:
        topics = [
            topic_metadata(ctx, t)
            for t in ctx.logs.topics().values()
            if authorize(req, DESCRIBE, TOPIC, t.name, audit=False)
        ]
    else:
        allow_create = getattr(body, "allow_auto_topic_creation", True)
        for name in names:
            topics.append(await _lookup(req, name, allow_create))
    if getattr(body, "include_topic_authorized_operations", False):
        for entry in topics:
            if entry["error_code"] == ErrorCode.NONE:
                entry["topic_authorized_operations"] = authorized_operations(
                    req, TOPIC, entry["name"]
                )
    response: dict[str, Any] = {
        "brokers": [_broker(req)],
        "cluster_id": ctx.cluster_id,
        "controller_id": ctx.node_id,
        "topics": topics,
        "cluster_authorized_operations": NOT_REQUESTED,
    }
    if getattr(body, "include_cluster_authorized_operations", False):
        response["cluster_authorized_operations"] = authorized_operations(
            req, CLUSTER, CLUSTER_NAME
        )
    return response


async def _lookup(req: Request, name: str | None, allow_create: bool) -> dict[str, Any]:
    ctx = req.ctx
    if name is None:
        return {"error_code": ErrorCode.INVALID_TOPIC_EXCEPTION, "name": ""}
    if not authorize(req, DESCRIBE, TOPIC, name):
        return {"error_code": ErrorCode.TOPIC_AUTHORIZATION_FAILED, "name": name}
    topic = ctx.logs.get(name)
    if topic is None:
        try:
            validate_topic_name(name)
            if is_internal(name) or not (allow_create and ctx.config["auto_create_topics"]):
                return {"error_code": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "name": name}
            if not may_create_topic(req, name):
                return {"error_code": ErrorCode.TOPIC_AUTHORIZATION_FAILED, "name": name}
            topic = await create_topic(ctx, name, ctx.config["default_partitions"], {})
        except StreamdError as exc:
            if exc.code == ErrorCode.TOPIC_ALREADY_EXISTS:  # created by a concurrent request
                return {"error_code": ErrorCode.LEADER_NOT_AVAILABLE, "name": name}
            return {"error_code": exc.code, "name": name}
    return topic_metadata(ctx, topic)


async def create_topic(ctx: Any, name: str, partitions: int, overrides: dict[str, str]) -> Any:
    """The one path to topic creation, so tiering hears about every new topic."""
    topic = await ctx.logs.create_topic_async(name, partitions, overrides)
    if ctx.tiering is not None:
        await ctx.tiering.on_topic_changed(topic)
    return topic


@api(60, "DescribeCluster", 0, 1)
async def describe_cluster(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    host, port = advertised_address(req)
    operations = NOT_REQUESTED
    if req.body.include_cluster_authorized_operations:
        operations = authorized_operations(req, CLUSTER, CLUSTER_NAME)
    return {
        "error_code": ErrorCode.NONE,
        "cluster_id": ctx.cluster_id,
        "controller_id": ctx.node_id,
        "brokers": [{"broker_id": ctx.node_id, "host": host, "port": port}],
        "cluster_authorized_operations": operations,
    }
