"""Consumer groups and committed offsets: the wire side of :mod:`streamd.groups`.

This broker is the coordinator of every group and every transactional id (FindCoordinator
answers with itself for key types GROUP and TRANSACTION). Requests are translated into
coordinator calls on ``ctx.groups`` (a :class:`streamd.groups.service.GroupService`); nothing
here holds group state.

Old versions, as Kafka 3.x treats them: OffsetCommit v0 (which stored in ZooKeeper in old
Kafka) is a commit with generation -1 and no member, so it is accepted while the group has no
members; v1 may carry a per-partition commit timestamp (-1 = now); v2-v4 a retention time that
sets the offsets' expire time (-1 = ``offsets.retention.minutes``). OffsetFetch v0 reads the same
store as v1. Before OffsetFetch v2 there is no top-level error code: a group-level error is
reported on every requested partition.
"""

from __future__ import annotations

from typing import Any

from streamd.errors import ErrorCode
from streamd.groups.coordinator import CommitOffset
from streamd.groups.model import JoinRequest
from streamd.kafka import codec
from streamd.kafka.apis import api
from streamd.kafka.authz import (
    DELETE,
    DESCRIBE,
    GROUP,
    NOT_REQUESTED,
    READ,
    TOPIC,
    TRANSACTIONAL_ID,
    authorize,
    authorize_cluster,
    authorized_operations,
)
from streamd.kafka.context import Request
from streamd.kafka.handlers.meta import advertised_address

E = ErrorCode
KEY_TYPE_GROUP = 0
KEY_TYPE_TRANSACTION = 1


def _client_host(peer: str) -> str:
    return "/" + peer.rpartition(":")[0] if ":" in peer else peer


def _topic_known(ctx: Any, topic: str, partition: int) -> bool:
    logs = ctx.logs
    if logs is None:
        return True
    t = logs.get(topic)
    return t is not None and 0 <= partition < len(t.partitions)


@api(10, "FindCoordinator", 0, 4)
async def find_coordinator(req: Request) -> dict[str, Any]:
    ctx, body = req.ctx, req.body
    key_type = getattr(body, "key_type", KEY_TYPE_GROUP)
    keys = list(body.coordinator_keys) if req.version >= 4 else [body.key]
    coordinators = []
    for key in keys:
        entry: dict[str, Any] = {"key": key, "node_id": -1, "host": "", "port": -1}
        if key_type == KEY_TYPE_TRANSACTION:
            if not authorize(req, DESCRIBE, TRANSACTIONAL_ID, key):
                entry.update(
                    error_code=E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    error_message="not authorized",
                )
                coordinators.append(entry)
                continue
            available = ctx.txn is not None
        else:
            available = ctx.groups is not None
        if not available:
            entry.update(error_code=E.COORDINATOR_NOT_AVAILABLE, error_message="not available")
        elif key_type not in (KEY_TYPE_GROUP, KEY_TYPE_TRANSACTION):
            entry.update(error_code=E.INVALID_REQUEST, error_message=f"key type {key_type}")
        elif key_type == KEY_TYPE_GROUP and not authorize(req, DESCRIBE, GROUP, key):
            entry.update(error_code=E.GROUP_AUTHORIZATION_FAILED, error_message="not authorized")
        else:
            host, port = advertised_address(req)
            entry.update(
                error_code=E.NONE, error_message=None, node_id=ctx.node_id, host=host, port=port
            )
        coordinators.append(entry)
    if req.version >= 4:
        return {"coordinators": coordinators}
    return coordinators[0]


def _no_coordinator(req: Request) -> bool:
    return req.ctx.groups is None


@api(11, "JoinGroup", 0, 9)
async def join_group(req: Request) -> dict[str, Any]:
    body, v = req.body, req.version
    if _no_coordinator(req):
        return {"error_code": E.COORDINATOR_NOT_AVAILABLE, "member_id": body.member_id}
    if not authorize(req, READ, GROUP, body.group_id):
        return {"error_code": E.GROUP_AUTHORIZATION_FAILED, "member_id": body.member_id}
    session_ms = codec.ms(body.session_timeout)
    rebalance_ms = codec.ms(body.rebalance_timeout) if v >= 1 else session_ms
    result = await req.ctx.groups.join(
        JoinRequest(
            group_id=body.group_id,
            member_id=body.member_id,
            instance_id=getattr(body, "group_instance_id", None),
            protocol_type=body.protocol_type,
            protocols=tuple((p.name, bytes(p.metadata)) for p in body.protocols),
            session_timeout_ms=session_ms,
            rebalance_timeout_ms=rebalance_ms,
            client_id=req.header.client_id or "",
            client_host=_client_host(req.peer),
            require_known_member_id=v >= 4,
            supports_skip_assignment=v >= 9,
        )
    )
    nullable = v >= 7
    return {
        "error_code": result.error,
        "generation_id": result.generation_id,
        "protocol_type": result.protocol_type,
        "protocol_name": result.protocol_name if nullable else (result.protocol_name or ""),
        "leader": result.leader_id,
        "skip_assignment": result.skip_assignment,
        "member_id": result.member_id,
        "members": [
            {"member_id": m.member_id, "group_instance_id": m.instance_id, "metadata": m.metadata}
            for m in result.members
        ],
    }


@api(14, "SyncGroup", 0, 5)
async def sync_group(req: Request) -> dict[str, Any]:
    body = req.body
    if _no_coordinator(req):
        return {"error_code": E.COORDINATOR_NOT_AVAILABLE}
    if not authorize(req, READ, GROUP, body.group_id):
        return {"error_code": E.GROUP_AUTHORIZATION_FAILED}
    result = await req.ctx.groups.sync(
        body.group_id,
        body.generation_id,
        body.member_id,
        getattr(body, "group_instance_id", None),
        {a.member_id: bytes(a.assignment) for a in body.assignments},
        getattr(body, "protocol_type", None),
        getattr(body, "protocol_name", None),
    )
    return {
        "error_code": result.error,
        "protocol_type": result.protocol_type,
        "protocol_name": result.protocol_name,
        "assignment": result.assignment,
    }


@api(12, "Heartbeat", 0, 4)
async def heartbeat(req: Request) -> dict[str, Any]:
    body = req.body
    if _no_coordinator(req):
        return {"error_code": E.COORDINATOR_NOT_AVAILABLE}
    if not authorize(req, READ, GROUP, body.group_id):
        return {"error_code": E.GROUP_AUTHORIZATION_FAILED}
    error = req.ctx.groups.heartbeat(
        body.group_id, body.generation_id, body.member_id, getattr(body, "group_instance_id", None)
    )
    return {"error_code": error}


@api(13, "LeaveGroup", 0, 5)
async def leave_group(req: Request) -> dict[str, Any]:
    body, v = req.body, req.version
    if v >= 3:
        members = [(m.member_id, m.group_instance_id) for m in body.members]
    else:
        members = [(body.member_id, None)]
    if _no_coordinator(req):
        return {"error_code": E.COORDINATOR_NOT_AVAILABLE}
    if not authorize(req, READ, GROUP, body.group_id):
        return {"error_code": E.GROUP_AUTHORIZATION_FAILED}
    error, errors = req.ctx.groups.leave(body.group_id, members)
    if v < 3:
        return {"error_code": error if error != E.NONE else errors[0]}
    return {
        "error_code": error,
        "members": [
            {"member_id": mid, "group_instance_id": iid, "error_code": code}
            for (mid, iid), code in zip(members, errors, strict=True)
        ],
    }


@api(8, "OffsetCommit", 0, 8)
async def offset_commit(req: Request) -> dict[str, Any]:
    ctx, body = req.ctx, req.body
    retention_ms = -1
    if 2 <= req.version <= 4:
        retention_ms = codec.ms(body.retention_time)
        retention_ms = retention_ms if retention_ms >= 0 else -1
    offsets: list[CommitOffset] = []
    unknown: set[tuple[str, int]] = set()
    refused: dict[tuple[str, int], int] = {}
    group_ok = authorize(req, READ, GROUP, body.group_id)
    for t in body.topics:
        topic_ok = authorize(req, READ, TOPIC, t.name)
        for p in t.partitions:
            if not group_ok:
                refused[(t.name, p.partition_index)] = E.GROUP_AUTHORIZATION_FAILED
            elif not topic_ok:
                refused[(t.name, p.partition_index)] = E.TOPIC_AUTHORIZATION_FAILED
            elif _topic_known(ctx, t.name, p.partition_index):
                offsets.append(
                    CommitOffset(
                        t.name,
                        p.partition_index,
                        p.committed_offset,
                        getattr(p, "committed_leader_epoch", -1),
                        p.committed_metadata,
                        getattr(p, "commit_timestamp", -1),
                        retention_ms,
                    )
                )
            else:
                unknown.add((t.name, p.partition_index))
    if ctx.groups is None:
        codes: list[int] = [E.COORDINATOR_NOT_AVAILABLE] * len(offsets)
    elif not offsets:
        codes = []
    else:
        codes = await ctx.groups.commit(
            body.group_id,
            getattr(body, "generation_id_or_member_epoch", -1),
            getattr(body, "member_id", ""),
            getattr(body, "group_instance_id", None),
            offsets,
        )
    by_tp = {(o.topic, o.partition): c for o, c in zip(offsets, codes, strict=True)}
    return {
        "topics": [
            {
                "name": t.name,
                "partitions": [
                    {
                        "partition_index": p.partition_index,
                        "error_code": refused.get((t.name, p.partition_index))
                        or (
                            E.UNKNOWN_TOPIC_OR_PARTITION
                            if (t.name, p.partition_index) in unknown
                            else by_tp[(t.name, p.partition_index)]
                        ),
                    }
                    for p in t.partitions
                ],
            }
            for t in body.topics
        ]
    }


def _fetch_group(req: Request, group_id: str, topics: Any) -> list[dict[str, Any]]:
    ctx = req.ctx
    # KIP-447: with require_stable, an offset awaiting a transaction's outcome is not answered.
    unstable = None
    if ctx.txn is not None and getattr(req.body, "require_stable", False):
        unstable = ctx.txn.has_pending_offset
    wanted = None
    if topics is not None:
        wanted = [(t.name, p) for t in topics for p in t.partition_indexes]
    found = ctx.groups.fetch(group_id, wanted)
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for (topic, partition), info in found.items():
        if not authorize(req, DESCRIBE, TOPIC, topic):
            if topics is not None:
                by_topic.setdefault(topic, []).append(
                    {
                        "partition_index": partition,
                        "committed_offset": -1,
                        "error_code": E.TOPIC_AUTHORIZATION_FAILED,
                    }
                )
            continue
        entry: dict[str, Any] = {
            "partition_index": partition,
            "committed_offset": -1,
            "committed_leader_epoch": -1,
            "metadata": "",
            "error_code": E.NONE,
        }
        if unstable is not None and unstable(group_id, topic, partition):
            entry["error_code"] = E.UNSTABLE_OFFSET_COMMIT
        elif info is not None:
            entry.update(
                committed_offset=info.offset,
                committed_leader_epoch=info.leader_epoch,
                metadata=info.metadata,
            )
        by_topic.setdefault(topic, []).append(entry)
    if topics is not None:
        for t in topics:
            by_topic.setdefault(t.name, [])
    return [{"name": name, "partitions": parts} for name, parts in by_topic.items()]


def _partition_errors(body: Any, code: int) -> dict[str, Any]:
    """OffsetFetch v0-v1 have no top-level error code: the error goes on every partition."""
    return {
        "topics": [
            {
                "name": t.name,
                "partitions": [
                    {"partition_index": p, "committed_offset": -1, "error_code": code}
                    for p in t.partition_indexes
                ],
            }
            for t in body.topics or ()
        ]
    }


@api(9, "OffsetFetch", 0, 8)
async def offset_fetch(req: Request) -> dict[str, Any]:
    ctx, body = req.ctx, req.body
    if req.version < 2:
        if ctx.groups is None:
            return _partition_errors(body, E.COORDINATOR_NOT_AVAILABLE)
        if not authorize(req, DESCRIBE, GROUP, body.group_id):
            return _partition_errors(body, E.GROUP_AUTHORIZATION_FAILED)
    if ctx.groups is None:
        if req.version >= 8:
            return {
                "groups": [
                    {"group_id": g.group_id, "error_code": E.COORDINATOR_NOT_AVAILABLE}
                    for g in body.groups
                ]
            }
        return {"error_code": E.COORDINATOR_NOT_AVAILABLE}
    if req.version >= 8:
        return {
            "groups": [
                {"group_id": g.group_id, "error_code": E.GROUP_AUTHORIZATION_FAILED}
                if not authorize(req, DESCRIBE, GROUP, g.group_id)
                else {
                    "group_id": g.group_id,
                    "topics": _fetch_group(req, g.group_id, g.topics),
                    "error_code": E.NONE,
                }
                for g in body.groups
            ]
        }
    if not authorize(req, DESCRIBE, GROUP, body.group_id):
        return {"error_code": E.GROUP_AUTHORIZATION_FAILED}
    return {"topics": _fetch_group(req, body.group_id, body.topics), "error_code": E.NONE}


@api(16, "ListGroups", 0, 4)
async def list_groups(req: Request) -> dict[str, Any]:
    if _no_coordinator(req):
        return {"error_code": E.COORDINATOR_NOT_AVAILABLE}
    states = getattr(req.body, "states_filter", ()) or ()
    all_groups = authorize_cluster(req, DESCRIBE, audit=False)
    return {
        "error_code": E.NONE,
        "groups": [
            {"group_id": gid, "protocol_type": ptype, "group_state": state}
            for gid, ptype, state in req.ctx.groups.list_groups(states)
            if all_groups or authorize(req, DESCRIBE, GROUP, gid, audit=False)
        ],
    }


@api(15, "DescribeGroups", 0, 5)
async def describe_groups(req: Request) -> dict[str, Any]:
    groups = []
    for group_id in req.body.groups:
        if _no_coordinator(req):
            groups.append({"group_id": group_id, "error_code": E.COORDINATOR_NOT_AVAILABLE})
            continue
        if not authorize(req, DESCRIBE, GROUP, group_id):
            groups.append({"group_id": group_id, "error_code": E.GROUP_AUTHORIZATION_FAILED})
            continue
        d = req.ctx.groups.describe(group_id)
        operations = NOT_REQUESTED
        if getattr(req.body, "include_authorized_operations", False):
            operations = authorized_operations(req, GROUP, group_id)
        groups.append(
            {
                "authorized_operations": operations,
                "error_code": E.NONE,
                "group_id": d.group_id,
                "group_state": d.state,
                "protocol_type": d.protocol_type,
                "protocol_data": d.protocol_name,
                "members": [
                    {
                        "member_id": m.member_id,
                        "group_instance_id": m.instance_id,
                        "client_id": m.client_id,
                        "client_host": m.client_host,
                        "member_metadata": m.metadata,
                        "member_assignment": m.assignment,
                    }
                    for m in d.members
                ],
            }
        )
    return {"groups": groups}


@api(42, "DeleteGroups", 0, 2)
async def delete_groups(req: Request) -> dict[str, Any]:
    names = list(req.body.groups_names)
    allowed = [n for n in names if authorize(req, DELETE, GROUP, n)]
    if _no_coordinator(req):
        codes: list[int] = [E.COORDINATOR_NOT_AVAILABLE] * len(names)
    else:
        done = dict(zip(allowed, await req.ctx.groups.delete_groups(allowed), strict=True))
        codes = [done.get(n, E.GROUP_AUTHORIZATION_FAILED) for n in names]
    return {
        "results": [{"group_id": n, "error_code": c} for n, c in zip(names, codes, strict=True)]
    }


@api(47, "OffsetDelete", 0, 0)
async def offset_delete(req: Request) -> dict[str, Any]:
    """Kafka's rule: DELETE on the group, and READ on each topic named (the partitions of a
    topic without it answer TOPIC_AUTHORIZATION_FAILED and keep their offsets)."""
    ctx, body = req.ctx, req.body
    if ctx.groups is None:
        return {"error_code": E.COORDINATOR_NOT_AVAILABLE}
    if not authorize(req, DELETE, GROUP, body.group_id):
        return {"error_code": E.GROUP_AUTHORIZATION_FAILED}
    readable = {t.name for t in body.topics if authorize(req, READ, TOPIC, t.name)}
    known = [
        (t.name, p.partition_index)
        for t in body.topics
        if t.name in readable
        for p in t.partitions
        if _topic_known(ctx, t.name, p.partition_index)
    ]
    error, codes = await ctx.groups.delete_offsets(body.group_id, known)
    if error != E.NONE:
        return {"error_code": error}
    by_tp: dict[tuple[str, int], int] = dict(zip(known, codes, strict=True))
    for t in body.topics:
        if t.name not in readable:
            for p in t.partitions:
                by_tp[(t.name, p.partition_index)] = E.TOPIC_AUTHORIZATION_FAILED
    return {
        "error_code": E.NONE,
        "topics": [
            {
                "name": t.name,
                "partitions": [
                    {
                        "partition_index": p.partition_index,
                        "error_code": by_tp.get(
                            (t.name, p.partition_index), E.UNKNOWN_TOPIC_OR_PARTITION
                        ),
                    }
                    for p in t.partitions
                ],
            }
            for t in body.topics
        ],
    }
