"""The admin API's JSON and metrics routes (the console's pages are in
:mod:`streamd.broker.console`).

Every route reads broker state through :class:`AdminSources`, given at construction, and
filters what it shows through the caller's :class:`~streamd.broker.admin_api.Access`.

- ``GET /v1/status/ready``: 200 once the Kafka listeners accept connections, else 503; no
  authentication, no details.
- ``GET /v1/health``: the health document; HTTP 503 when its ``status`` is not ``ok`` (the
  document itself comes from ``AdminSources.health``, so the broker decides what "ok" means).
- ``GET /metrics``: Prometheus text; series of topics the caller may not describe are left out.
- ``GET /v1/cluster``, ``/v1/cluster/archive``, ``/v1/topics``, ``/v1/topics/{topic}/storage``,
  ``/v1/logdirs`` (DescribeLogDirs' sizes plus the archive's bytes per partition).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from streamd.broker.admin_api import (
    AdminServer,
    access,
    error,
    json_response,
    require_cluster,
    require_topic,
    topic_id_text,
)
from streamd.kafka.offsets_topic import is_internal
from streamd.log.manager import LogManager
from streamd.metrics import CONTENT_TYPE, Metrics
from streamd.tiering.cluster_archive import ClusterArchive
from streamd.tiering.service import TieringService


@dataclass(frozen=True, kw_only=True)
class AdminSources:
    node_id: int
    cluster_id: Callable[[], str]
    kafka_address: Callable[[], str]
    logs: LogManager
    metrics: Metrics
    health: Callable[[], dict[str, Any]]
    ready: Callable[[], bool]
    tiering: Callable[[], TieringService | None]
    archive: Callable[[], ClusterArchive | None]
    log_dirs: Callable[[], Awaitable[dict[str, Any]]]


def topic_summaries(sources: AdminSources, names: list[str]) -> list[dict[str, Any]]:
    """One entry per topic: partitions with log start, high watermark and local bytes."""
    out = []
    topics = sources.logs.topics()
    for name in names:
        topic = topics.get(name)
        if topic is None:
            continue
        parts = [
            {
                "partition": i,
                "log_start_offset": p.log_start_offset,
                "high_watermark": p.high_watermark,
                "local_bytes": p.size_bytes,
            }
            for i, p in enumerate(topic.partitions)
        ]
        out.append(
            {
                "name": name,
                "topic_id": topic_id_text(topic.topic_id),
                "internal": is_internal(name),
                "remote_storage_enable": topic.config.remote_storage_enable,
                "partitions": parts,
                "messages": sum(p["high_watermark"] - p["log_start_offset"] for p in parts),
                "local_bytes": sum(p["local_bytes"] for p in parts),
            }
        )
    return out


def install(server: AdminServer, sources: AdminSources) -> None:
    async def ready(request: web.Request) -> web.Response:
        if sources.ready():
            return json_response({"status": "ready"})
        return json_response({"status": "starting"}, 503)

    async def health(request: web.Request) -> web.Response:
        require_cluster(request)
        doc = sources.health()
        return json_response(doc, 200 if doc.get("status") == "ok" else 503)

    async def metrics(request: web.Request) -> web.Response:
        caller = access(request)
        sources.metrics.retain_topics(sources.logs.topics())
        allowed = None if caller.authorizer is None else caller.may_describe_topic
        body = sources.metrics.render(allowed)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def cluster(request: web.Request) -> web.Response:
        names = access(request).visible(sorted(sources.logs.topics()))
        return json_response(
            {
                "cluster_id": sources.cluster_id(),
                "node_id": sources.node_id,
                "kafka": sources.kafka_address(),
                "topics": len(names),
            }
        )

    async def topics(request: web.Request) -> web.Response:
        names = access(request).visible(sorted(sources.logs.topics()))
        return json_response({"topics": topic_summaries(sources, names)})

    async def storage(request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        require_topic(request, topic)
        tiering = sources.tiering()
        report = tiering.storage_report(topic) if tiering is not None else None
        if report is None:
            return error(404, f"unknown topic {topic!r}")
        local = sources.logs.topics().get(topic)
        if local is not None:
            report = dict(report, topic_id=topic_id_text(local.topic_id))
        return json_response(report)

    async def archive(request: web.Request) -> web.Response:
        require_cluster(request)
        running = sources.archive()
        if running is None:
            return error(404, "cluster metadata archive not running")
        return json_response(running.status())

    async def log_dirs(request: web.Request) -> web.Response:
        require_cluster(request)  # as DescribeLogDirs: DESCRIBE on the cluster
        return json_response(await sources.log_dirs())

    server.get("/v1/status/ready", ready)
    server.get("/v1/logdirs", log_dirs)
    server.get("/v1/health", health)
    server.get("/metrics", metrics)
    server.get("/v1/cluster", cluster)
    server.get("/v1/cluster/archive", archive)
    server.get("/v1/topics", topics)
    server.get("/v1/topics/{topic}/storage", storage)
