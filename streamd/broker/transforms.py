"""Wiring of data transforms: what the supervisor needs from the broker, and the admin routes.

:class:`TransformsBroker` is the broker side of :class:`streamd.transforms.supervisor.BrokerSide`:
it serves each worker connection through the Kafka front (:func:`streamd.kafka.server.serve_socket`)
as the principal ``Internal:transforms``, which the authorizer treats as a super user (see
:mod:`streamd.transforms.api` for why that grants nothing the deployer lacks), reads committed
positions from the group coordinator and end offsets from the logs (lag), and deletes a deleted
transform's group.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

from streamd.broker.admin_api import AdminServer, json_reply
from streamd.config import BrokerConfig
from streamd.groups.service import GroupService
from streamd.kafka.context import KafkaContext
from streamd.kafka.server import ConnectionRegistry, serve_socket
from streamd.log.manager import LogManager
from streamd.security.acl import CLUSTER_NAME, Operation, ResourceType
from streamd.transforms.api import Caller, TransformsApi
from streamd.transforms.supervisor import PRINCIPAL, PartitionProgress, Settings, Supervisor

__all__ = ["PRINCIPAL", "TransformsBroker", "install_routes", "supervisor"]


class TransformsBroker:
    def __init__(self, ctx: KafkaContext, logs: LogManager, groups: GroupService) -> None:
        self.ctx = ctx
        self.logs = logs
        self.groups = groups
        self.connections = ConnectionRegistry()
        """The workers' own: no client connection limit applies to them."""

    async def connect(self, sock: socket.socket) -> asyncio.BaseTransport:
        return await serve_socket(
            self.ctx, sock, principal=PRINCIPAL, registry=self.connections
        )

    def progress(self, group_id: str, topic: str) -> list[PartitionProgress]:
        t = self.logs.get(topic)
        if t is None:
            return []
        committed = self.groups.fetch(
            group_id, [(topic, i) for i in range(len(t.partitions))]
        )
        out = []
        for i, plog in enumerate(t.partitions):
            info = committed.get((topic, i))
            out.append(
                PartitionProgress(i, info.offset if info is not None else None, _stable(plog))
            )
        return out

    async def forget_group(self, group_id: str) -> None:
        await self.groups.delete_groups([group_id])

    def partitions_of(self, topic: str) -> int | None:
        t = self.logs.get(topic)
        return None if t is None else len(t.partitions)


def _stable(plog: Any) -> int:
    """What a read_committed reader can reach: the last stable offset where the log keeps one,
    else the high watermark."""
    return int(plog.high_watermark)


def settings(cfg: BrokerConfig, *, transactional: bool) -> Settings:
    return Settings(
        enabled=cfg["transforms.enabled"],
        memory_limit_bytes=cfg["transforms.memory_limit_bytes"],
        record_timeout_ms=cfg["transforms.record_timeout_ms"],
        commit_interval_ms=cfg["transforms.commit_interval_ms"],
        max_restarts=cfg["transforms.max_restarts"],
        restart_backoff_max_ms=cfg["transforms.restart_backoff_max_ms"],
        nice=cfg["transforms.worker_nice"],
        transactional=transactional,
    )


def supervisor(
    cfg: BrokerConfig,
    ctx: KafkaContext,
    logs: LogManager,
    groups: GroupService,
    *,
    transactional: bool,
) -> tuple[Supervisor, TransformsBroker]:
    """``transactional``: the broker has a transaction coordinator, so workers commit output
    and positions in one transaction (else: idempotent output, then OffsetCommit)."""
    side = TransformsBroker(ctx, logs, groups)
    sup = Supervisor(
        Path(cfg.data_dir) / "transforms", settings(cfg, transactional=transactional), side
    )
    return sup, side


def install_routes(admin: AdminServer, sup: Supervisor, side: TransformsBroker, ctx: Any) -> None:
    """``/v1/transforms`` on the admin server; callers are ``User:ANONYMOUS`` from their
    address (this admin server does not authenticate)."""

    def may(caller: Caller, need: str) -> bool:
        authorizer = ctx.authorizer
        if authorizer is None:
            return True
        operation = Operation.ALTER if need == "alter" else Operation.DESCRIBE
        return bool(
            authorizer.authorize(
                caller.principal, caller.host, operation, ResourceType.CLUSTER, CLUSTER_NAME
            )
        )

    api = TransformsApi(sup, may=may, partitions_of=side.partitions_of)

    def caller(peer: str) -> Caller:
        return Caller("User:ANONYMOUS", peer)

    def reply(result: tuple[int, Any]) -> Any:
        status, doc = result
        return json_reply(doc, status)

    async def listing(query: Any, body: bytes, peer: str) -> Any:
        return reply(await api.list(caller(peer)))

    async def deploy(query: Any, body: bytes, peer: str) -> Any:
        try:
            doc = json.loads(body or b"null")
        except ValueError:
            return json_reply({"error": "the request body is not JSON"}, 400)
        return reply(await api.deploy(caller(peer), doc))

    async def describe(query: Any, body: bytes, peer: str, name: str) -> Any:
        return reply(await api.describe(caller(peer), name))

    async def delete(query: Any, body: bytes, peer: str, name: str) -> Any:
        return reply(await api.delete(caller(peer), name))

    async def pause(query: Any, body: bytes, peer: str, name: str) -> Any:
        return reply(await api.pause(caller(peer), name))

    async def resume(query: Any, body: bytes, peer: str, name: str) -> Any:
        return reply(await api.resume(caller(peer), name))

    async def logs(query: Any, body: bytes, peer: str, name: str) -> Any:
        return reply(await api.logs(caller(peer), name, query.get("lines")))

    admin.route("GET", "/v1/transforms", listing, with_body=True)
    admin.route("POST", "/v1/transforms", deploy, with_body=True)
    admin.route("GET", "/v1/transforms/{name}", describe, with_body=True)
    admin.route("DELETE", "/v1/transforms/{name}", delete, with_body=True)
    admin.route("POST", "/v1/transforms/{name}/pause", pause, with_body=True)
    admin.route("POST", "/v1/transforms/{name}/resume", resume, with_body=True)
    admin.route("GET", "/v1/transforms/{name}/logs", logs, with_body=True)
