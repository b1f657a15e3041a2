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

from aiohttp import web

from streamd.broker.admin_api import AdminServer, access, error, json_response
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
    """What a read_committed reader (the worker) can reach: the last stable offset."""
    return int(plog.last_stable_offset)


def settings(cfg: BrokerConfig) -> Settings:
    return Settings(
        enabled=cfg["transforms.enabled"],
        memory_limit_bytes=cfg["transforms.memory_limit_bytes"],
        record_timeout_ms=cfg["transforms.record_timeout_ms"],
        commit_interval_ms=cfg["transforms.commit_interval_ms"],
        max_restarts=cfg["transforms.max_restarts"],
        restart_backoff_max_ms=cfg["transforms.restart_backoff_max_ms"],
        nice=cfg["transforms.worker_nice"],
    )


def supervisor(
    cfg: BrokerConfig,
    ctx: KafkaContext,
    logs: LogManager,
    groups: GroupService,
) -> tuple[Supervisor, TransformsBroker]:
    side = TransformsBroker(ctx, logs, groups)
    sup = Supervisor(Path(cfg.data_dir) / "transforms", settings(cfg), side)
    return sup, side


def install_routes(server: AdminServer, sup: Supervisor, side: TransformsBroker) -> None:
    """``/v1/transforms`` on the admin server (see :mod:`streamd.transforms.api`); the caller
    is the admin API's authenticated principal."""
    authorizer = server.authorizer

    def may(caller: Caller, need: str) -> bool:
        if authorizer is None:
            return True
        operation = Operation.ALTER if need == "alter" else Operation.DESCRIBE
        return bool(
            authorizer.authorize(
                caller.principal, caller.host, operation, ResourceType.CLUSTER, CLUSTER_NAME
            )
        )

    api = TransformsApi(sup, may=may, partitions_of=side.partitions_of)

    def caller(request: web.Request) -> Caller:
        who = access(request)
        return Caller(who.principal, who.host)

    def reply(result: tuple[int, Any]) -> web.Response:
        status, doc = result
        return json_response(doc, status)

    async def listing(request: web.Request) -> web.Response:
        return reply(await api.list(caller(request)))

    async def deploy(request: web.Request) -> web.Response:
        try:
            doc = json.loads(await request.read() or b"null")
        except ValueError:
            return error(400, "the request body is not JSON")
        return reply(await api.deploy(caller(request), doc))

    async def describe(request: web.Request) -> web.Response:
        return reply(await api.describe(caller(request), request.match_info["name"]))

    async def delete(request: web.Request) -> web.Response:
        return reply(await api.delete(caller(request), request.match_info["name"]))

    async def pause(request: web.Request) -> web.Response:
        return reply(await api.pause(caller(request), request.match_info["name"]))

    async def resume(request: web.Request) -> web.Response:
        return reply(await api.resume(caller(request), request.match_info["name"]))

    async def logs(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return reply(await api.logs(caller(request), name, request.query.get("lines")))

    server.get("/v1/transforms", listing)
    server.post("/v1/transforms", deploy)
    server.get("/v1/transforms/{name}", describe)
    server.app.router.add_delete("/v1/transforms/{name}", delete)
    server.post("/v1/transforms/{name}/pause", pause)
    server.post("/v1/transforms/{name}/resume", resume)
    server.get("/v1/transforms/{name}/logs", logs)
