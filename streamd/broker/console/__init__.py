"""The web console at ``/console``: cluster health, topics (partitions, offsets, local vs
archived bytes, upload lag), consumer groups with lag per partition, and a message browser that
reads any offset, archived ones included.

Server-rendered HTML (:mod:`.pages`) from the broker's own state (:mod:`.views`) plus one small
script for live refresh; no build step. Served by the admin API, so ``admin.require_auth`` and
authorization apply to it as to every admin endpoint (the browser asks for the user name and
password once, then sends them with every request, live refreshes included).
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from aiohttp import web

from streamd.broker.admin_api import AdminServer, access, require_topic
from streamd.broker.admin_routes import AdminSources
from streamd.broker.console import pages, views
from streamd.broker.console.views import KafkaAccess, kafka_access
from streamd.groups.service import GroupService
from streamd.security.acl import Operation, ResourceType

__all__ = ["install", "kafka_access"]

STATIC = Path(__file__).parent / "static"


def _html(request: web.Request, title: str, section: str, body: str, refresh_ms: int = 3000
          ) -> web.Response:
    if request.headers.get("X-Console-Fragment") == "1":
        text = pages.fragment(body)
    else:
        text = pages.page(title, section, body, refresh_ms=refresh_ms)
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


def _not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(
        text=pages.page("not found", "", f"<h1>Not found</h1><p class=error>{pages.e(message)}</p>",
                        refresh_ms=0),
        content_type="text/html",
    )


def _credentials(request: web.Request) -> tuple[str | None, str | None]:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, _, password = base64.b64decode(token.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, None
    return user or None, password


def install(
    server: AdminServer,
    sources: AdminSources,
    groups: GroupService | None,
    kafka: KafkaAccess,
) -> None:
    async def overview(request: web.Request) -> web.Response:
        caller = access(request)
        health = sources.health() if caller.may_describe_cluster() else {"status": "hidden"}
        cluster = {
            "cluster_id": sources.cluster_id(),
            "node_id": sources.node_id,
            "kafka": sources.kafka_address(),
        }
        topics = views.topics_view(sources, caller)
        group_rows = views.groups_view(sources, groups, caller) if groups is not None else []
        return _html(request, "Cluster", "overview",
                     pages.overview(health, cluster, topics, group_rows))

    async def topics(request: web.Request) -> web.Response:
        internal = request.query.get("internal") == "1"
        rows = views.topics_view(sources, access(request), internal=internal)
        return _html(request, "Topics", "topics", pages.topics_page(rows, internal=internal))

    async def topic(request: web.Request) -> web.Response:
        name = request.match_info["topic"]
        require_topic(request, name)
        view = views.topic_view(sources, name)
        if view is None:
            raise _not_found(f"unknown topic {name!r}")
        return _html(request, name, "topics", pages.topic_page(view))

    async def group_list(request: web.Request) -> web.Response:
        rows = views.groups_view(sources, groups, access(request)) if groups is not None else []
        return _html(request, "Consumer groups", "groups", pages.groups_page(rows))

    async def group(request: web.Request) -> web.Response:
        gid = request.match_info["group"]
        caller = access(request)
        if caller.authorizer is not None and not caller.authorizer.authorize(
            caller.principal, caller.host, Operation.DESCRIBE, ResourceType.GROUP, gid
        ):
            raise web.HTTPForbidden(text=f"not authorized to describe group {gid!r}")
        if groups is None:
            raise _not_found("no group coordinator")
        view = views.group_view(sources, groups, gid, caller)
        if view["state"].lower() == "dead" and not view["partitions"]:
            raise _not_found(f"unknown group {gid!r}")
        return _html(request, gid, "groups", pages.group_page(view))

    async def messages(request: web.Request) -> web.Response:
        name = request.match_info["topic"]
        require_topic(request, name)
        topic_ = sources.logs.topics().get(name)
        if topic_ is None:
            raise _not_found(f"unknown topic {name!r}")
        query = dict(request.query)
        fmt = query.get("format", "text")
        if fmt not in views.FORMATS:
            fmt = "text"
        result = None
        if "partition" in query:
            try:
                req = _browse_request(name, query, len(topic_.partitions))
            except ValueError as exc:
                result = views.BrowseResult(messages=(), start_offset=-1, low=-1, high=-1,
                                            error=str(exc))
            else:
                user, password = _credentials(request)
                result = await asyncio.to_thread(views.browse, kafka, user, password, req)
        body = pages.messages_page(name, len(topic_.partitions), query, result, fmt)
        return _html(request, f"{name} messages", "topics", body, refresh_ms=0)

    server.get("/console", overview)
    server.get("/console/", overview)
    server.get("/console/topics", topics)
    server.get("/console/topics/{topic}", topic)
    server.get("/console/topics/{topic}/messages", messages)
    server.get("/console/groups", group_list)
    server.get("/console/groups/{group}", group)
    server.static("/console/static", str(STATIC))


def _browse_request(topic: str, query: dict[str, str], partitions: int) -> views.BrowseRequest:
    from streamd.broker.console.timestamps import parse_time

    try:
        partition = int(query.get("partition", "0"))
        limit = int(query.get("limit") or 20)
    except ValueError:
        raise ValueError("partition and max must be numbers") from None
    if not 0 <= partition < partitions:
        raise ValueError(f"topic {topic} has no partition {partition} (it has {partitions})")
    if not 1 <= limit <= views.MAX_MESSAGES:
        raise ValueError(f"max must be between 1 and {views.MAX_MESSAGES}")
    offset_text = query.get("offset", "").strip()
    time_text = query.get("timestamp", "").strip()
    offset = None
    if offset_text:
        if not offset_text.lstrip("-").isdigit():
            raise ValueError(f"invalid offset {offset_text!r}: expected a number")
        offset = int(offset_text)
    timestamp = parse_time(time_text) if time_text and offset is None else None
    return views.BrowseRequest(
        topic=topic, partition=partition, offset=offset, timestamp_ms=timestamp, limit=limit
    )
