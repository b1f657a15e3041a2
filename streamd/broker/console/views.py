"""What the console shows, as plain dicts: gathered from the broker's own state (topics,
tiering, groups) and, for the message browser, read over Kafka as the caller.

Decisions:

- Topics, partitions, storage and groups come from in-process state (the log manager, the
  tiering service's storage report, the group coordinator): a page costs no round trip and
  shows exactly what the admin API shows. Every list is filtered by the caller's DESCRIBE
  permission (topics and groups), as the Kafka APIs would filter it.
- Messages are read with a Kafka consumer (confluent-kafka, in a worker thread) connected to
  this broker's own listener *as the caller* (the HTTP basic credentials become the SASL
  login on a SASL listener), so ACLs apply exactly as for any client, compressed and archived
  batches decode the same way, and an archived offset is read back from the bucket by the
  normal fetch path. No group is joined and nothing is committed.
- Group lag is the partition's high watermark minus the committed offset, as
  ``streamd group describe`` computes it.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streamd.broker.admin_api import Access, topic_id_text
from streamd.broker.admin_routes import AdminSources
from streamd.config import BrokerConfig, ListenerSpec
from streamd.groups.service import GroupService
from streamd.kafka.offsets_topic import is_internal
from streamd.security.acl import Operation, ResourceType

MAX_MESSAGES = 200
SHOWN_BYTES = 16384
BROWSE_TIMEOUT_S = 8.0
FORMATS = ("text", "json", "hex", "base64")


# ---- topics and storage --------------------------------------------------------------------


def topics_view(
    sources: AdminSources, caller: Access, *, internal: bool = False
) -> list[dict[str, Any]]:
    """One row per visible topic: partitions, records, local and archived bytes, upload lag.
    Internal topics (``__consumer_offsets``) only with ``internal``."""
    tiering = sources.tiering()
    rows = []
    names = [n for n in sorted(sources.logs.topics()) if internal or not is_internal(n)]
    for name in caller.visible(names):
        detail = topic_view(sources, name)
        if detail is None:
            continue
        parts = detail["partitions"]
        rows.append(
            {
                "name": name,
                "partitions": len(parts),
                "records": sum(p["high_watermark"] - p["earliest_offset"] for p in parts),
                "local_bytes": sum(p["local_bytes"] for p in parts),
                "remote_bytes": sum(p["remote_bytes"] for p in parts),
                "upload_lag": sum(p["upload_lag"] for p in parts),
                "tiered": detail["remote_storage_enable"],
                "has_tiering": tiering is not None,
            }
        )
    return rows


def topic_view(sources: AdminSources, name: str) -> dict[str, Any] | None:
    topic = sources.logs.topics().get(name)
    if topic is None:
        return None
    tiering = sources.tiering()
    report = tiering.storage_report(name) if tiering is not None else None
    by_partition = {p["partition"]: p for p in (report or {}).get("partitions", [])}
    parts = []
    for index, plog in enumerate(topic.partitions):
        st = by_partition.get(index, {})
        hwm = plog.high_watermark
        last_uploaded = int(st.get("last_uploaded_offset", -1))
        tiered = topic.config.remote_storage_enable
        parts.append(
            {
                "partition": index,
                "earliest_offset": int(st.get("earliest_offset", plog.log_start_offset)),
                "remote_start_offset": int(st.get("remote_start_offset", -1)),
                "local_start_offset": plog.log_start_offset,
                "last_uploaded_offset": last_uploaded,
                "high_watermark": hwm,
                "local_bytes": plog.size_bytes,
                "remote_bytes": int(st.get("remote_bytes", 0)),
                "remote_segments": int(st.get("remote_segments", 0)),
                "upload_lag": max(0, hwm - last_uploaded - 1) if tiered else 0,
                "pending_uploads": int(st.get("pending_uploads", 0)),
                "last_upload_ms": int(st.get("last_upload_ms", -1)),
                "last_error": st.get("last_error"),
            }
        )
    return {
        "name": name,
        "topic_id": topic_id_text(topic.topic_id),
        "remote_storage_enable": topic.config.remote_storage_enable,
        "configs": dict(sorted(topic.overrides.items())),
        "partitions": parts,
    }


# ---- consumer groups -------------------------------------------------------------------------


def _may_describe_group(caller: Access, group: str) -> bool:
    if caller.authorizer is None:
        return True
    return caller.authorizer.authorize(
        caller.principal, caller.host, Operation.DESCRIBE, ResourceType.GROUP, group
    )


def groups_view(
    sources: AdminSources, groups: GroupService, caller: Access
) -> list[dict[str, Any]]:
    committed = groups.all_committed_offsets()
    states = {gid: (ptype, state) for gid, ptype, state in groups.list_groups()}
    rows = []
    for gid in sorted(set(states) | set(committed)):
        if not _may_describe_group(caller, gid):
            continue
        detail = group_view(sources, groups, gid, caller)
        rows.append(
            {
                "group": gid,
                "state": detail["state"],
                "members": len(detail["members"]),
                "topics": sorted({p["topic"] for p in detail["partitions"]}),
                "total_lag": detail["total_lag"],
            }
        )
    return rows


def group_view(
    sources: AdminSources, groups: GroupService, gid: str, caller: Access
) -> dict[str, Any]:
    desc = groups.describe(gid)
    committed = groups.all_committed_offsets().get(gid, {})
    owners: dict[tuple[str, int], str] = {}
    members = []
    for m in desc.members:
        assigned = _assignment(m.assignment)
        for tp in assigned:
            owners[tp] = m.member_id
        members.append(
            {
                "member_id": m.member_id,
                "client_id": m.client_id,
                "host": m.client_host,
                "partitions": [f"{t}-{p}" for t, p in sorted(assigned)],
            }
        )
    topics = sources.logs.topics()
    keys = sorted(set(committed) | set(owners))
    rows = []
    for topic, partition in keys:
        if not caller.may_describe_topic(topic):
            continue
        info = committed.get((topic, partition))
        t = topics.get(topic)
        end = (
            t.partitions[partition].high_watermark
            if t is not None and partition < len(t.partitions)
            else None
        )
        current = info.offset if info is not None else None
        rows.append(
            {
                "topic": topic,
                "partition": partition,
                "current_offset": current,
                "log_end_offset": end,
                "lag": end - current if end is not None and current is not None else None,
                "member_id": owners.get((topic, partition)),
            }
        )
    state = desc.state
    if state.lower() == "dead" and committed:
        state = "Empty"
    return {
        "group": gid,
        "state": state,
        "protocol": desc.protocol_name,
        "members": members,
        "partitions": rows,
        "total_lag": sum(r["lag"] for r in rows if r["lag"] is not None),
    }


def _assignment(data: bytes) -> list[tuple[str, int]]:
    """Topic partitions of a consumer-protocol assignment (version, [topic, [partition]],
    user data); anything else (another protocol type) is shown as no partitions."""
    out: list[tuple[str, int]] = []
    try:
        pos = 2
        (count,) = struct.unpack_from(">i", data, pos)
        pos += 4
        for _ in range(max(0, count)):
            (length,) = struct.unpack_from(">h", data, pos)
            pos += 2
            topic = data[pos : pos + length].decode()
            pos += length
            (n,) = struct.unpack_from(">i", data, pos)
            pos += 4
            parts = struct.unpack_from(f">{max(0, n)}i", data, pos)
            pos += 4 * max(0, n)
            out += [(topic, p) for p in parts]
    except (struct.error, UnicodeDecodeError):
        return []
    return out


# ---- the message browser -----------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaAccess:
    """How the console reaches this broker's Kafka listener."""

    bootstrap: str
    protocol: str
    mechanisms: tuple[str, ...]
    ca_file: str = ""
    has_credential: Callable[[str, str], bool] = field(default=lambda user, mech: True)


def kafka_access(
    config: BrokerConfig, has_credential: Callable[[str, str], bool]
) -> KafkaAccess:
    """Prefer a plaintext listener (no TLS setup), the first one otherwise."""
    listeners = config.listeners
    ranked = sorted(listeners, key=lambda s: s.protocol not in ("PLAINTEXT", "SASL_PLAINTEXT"))
    spec: ListenerSpec = ranked[0]
    host = "127.0.0.1" if spec.host in ("0.0.0.0", "", "::") else spec.host
    mechanisms = tuple(m for m in str(config["sasl.mechanisms"]).split(",") if m)
    return KafkaAccess(
        bootstrap=f"{host}:{spec.port}",
        protocol=spec.protocol,
        mechanisms=mechanisms,
        ca_file=config["tls.ca_file"],
        has_credential=has_credential,
    )


@dataclass(frozen=True, kw_only=True)
class BrowseRequest:
    topic: str
    partition: int
    offset: int | None = None
    timestamp_ms: int | None = None
    limit: int = 20


@dataclass(frozen=True, kw_only=True)
class Message:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, kw_only=True)
class BrowseResult:
    messages: tuple[Message, ...]
    start_offset: int
    low: int
    high: int
    error: str | None = None


def kafka_config(access: KafkaAccess, user: str | None, password: str | None) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": access.bootstrap,
        "group.id": "streamd-console",
        "client.id": "streamd-console",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "socket.connection.setup.timeout.ms": 5000,
        "log_level": 0,
    }
    protocol = access.protocol
    if protocol in ("SSL", "SASL_SSL"):
        conf["ssl.endpoint.identification.algorithm"] = "none"
        if access.ca_file:
            conf["ssl.ca.location"] = access.ca_file
    if protocol.startswith("SASL_"):
        if user is None:
            raise PermissionError(
                "the Kafka listener needs SASL: sign in to the admin API with a SCRAM user"
            )
        usable = [m for m in access.mechanisms if m == "PLAIN" or access.has_credential(user, m)]
        if not usable:
            raise PermissionError(
                f"user {user} has no credential for {', '.join(access.mechanisms)}"
            )
        conf.update(
            {"sasl.mechanism": usable[0], "sasl.username": user, "sasl.password": password or ""}
        )
    conf["security.protocol"] = protocol
    return conf


def browse(
    access: KafkaAccess, user: str | None, password: str | None, req: BrowseRequest
) -> BrowseResult:
    """Blocking: read up to ``req.limit`` records of one partition from ``offset`` (or the
    first at/after ``timestamp_ms``; neither: the earliest). Runs in a worker thread."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    try:
        conf = kafka_config(access, user, password)
    except PermissionError as exc:
        return BrowseResult(messages=(), start_offset=-1, low=-1, high=-1, error=str(exc))
    consumer = Consumer(conf)
    try:
        tp = TopicPartition(req.topic, req.partition)
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=5)
            start = low
            if req.timestamp_ms is not None:
                found = consumer.offsets_for_times(
                    [TopicPartition(req.topic, req.partition, req.timestamp_ms)], timeout=5
                )[0]
                start = found.offset if found.offset >= 0 else high
            elif req.offset is not None:
                start = min(max(req.offset, low), high)
        except KafkaException as exc:
            return BrowseResult(
                messages=(), start_offset=-1, low=-1, high=-1, error=exc.args[0].str()
            )
        out: list[Message] = []
        if start < high:
            consumer.assign([TopicPartition(req.topic, req.partition, start)])
            deadline = time.monotonic() + BROWSE_TIMEOUT_S
            limit = min(req.limit, MAX_MESSAGES)
            while len(out) < limit and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        break
                    return BrowseResult(
                        messages=tuple(out), start_offset=start, low=low, high=high,
                        error=err.str(),
                    )
                offset = int(msg.offset() or 0)
                headers: Any = msg.headers() or ()
                out.append(
                    Message(
                        partition=req.partition,
                        offset=offset,
                        timestamp=msg.timestamp()[1],
                        key=_as_bytes(msg.key()),
                        value=_as_bytes(msg.value()),
                        headers=tuple((str(k), _as_bytes(v)) for k, v in headers),
                    )
                )
                if offset + 1 >= high:
                    break
        return BrowseResult(messages=tuple(out), start_offset=start, low=low, high=high)
    finally:
        consumer.close()


def _as_bytes(data: Any) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    return str(data).encode()


def render_bytes(data: bytes | None, fmt: str) -> str:
    """A key, value or header as the browser shows it: text (UTF-8, invalid bytes replaced),
    JSON (pretty-printed when it parses, else the text), hex or base64; long ones cut."""
    if data is None:
        return "null"
    cut = data[:SHOWN_BYTES]
    more = f" ... ({len(data)} bytes)" if len(data) > SHOWN_BYTES else ""
    if fmt == "hex":
        return cut.hex(" ") + more
    if fmt == "base64":
        return base64.b64encode(cut).decode() + more
    text = cut.decode("utf-8", errors="replace")
    if fmt == "json":
        try:
            return json.dumps(json.loads(data), indent=2, ensure_ascii=False)
        except ValueError:
            return text + more
    return text + more


def iter_headers(
    headers: Iterable[tuple[str, bytes | None]], fmt: str
) -> list[tuple[str, str]]:
    return [(k, render_bytes(v, "text" if fmt == "json" else fmt)) for k, v in headers]
