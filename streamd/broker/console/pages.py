"""HTML of the console pages: plain functions from view dicts to strings.

Every value is escaped with :func:`html.escape` at the point it enters the markup. Tables
carry ``id`` / ``data-*`` attributes naming what a row is, so tests (and users' scripts) can
find a partition's row without parsing the layout. A page is ``<main>`` plus a frame; live
refresh re-requests the page with ``X-Console-Fragment: 1`` and swaps ``<main>`` only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from streamd.broker.console.views import FORMATS, BrowseResult, iter_headers, render_bytes

NAV = (("overview", "/console", "Overview"), ("topics", "/console/topics", "Topics"),
       ("groups", "/console/groups", "Consumer groups"))


def human_bytes(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def when(ms: int) -> str:
    if ms is None or ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def e(value: Any) -> str:
    return escape("-" if value is None else str(value))


def page(title: str, section: str, body: str, *, refresh_ms: int = 3000) -> str:
    nav = "".join(
        f'<a href="{href}"{" class=active" if key == section else ""}>{label}</a>'
        for key, href, label in NAV
    )
    stamp = time.strftime("%H:%M:%S")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{e(title)} · streamd console</title>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        '<link rel=stylesheet href="/console/static/console.css">'
        '<script src="/console/static/console.js" defer></script></head><body>'
        f'<header><a class=brand href="/console">streamd</a><nav>{nav}</nav>'
        '<span class=live><label><input type=checkbox id=live'
        f'{" checked" if refresh_ms else ""}> live</label> '
        f'<span id=updated>updated {stamp}</span></span></header>'
        f'<main id=main data-refresh-ms="{refresh_ms}">{body}</main></body></html>'
    )


def fragment(body: str) -> str:
    """What a live refresh swaps in: the new ``<main>`` content and the time it was built."""
    return f'<template id=stamp>{time.strftime("%H:%M:%S")}</template>{body}'


def table(
    table_id: str,
    headers: Sequence[str],
    rows: Iterable[tuple[dict[str, str], Sequence[str]]],
    *,
    empty: str = "nothing here yet",
) -> str:
    """``rows``: (data attributes, cells already escaped/HTML)."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = []
    for attrs, cells in rows:
        attr = "".join(f' data-{k}="{e(v)}"' for k, v in attrs.items())
        tds = "".join(
            f'<td class="{escape(headers[i].lower().replace(" ", "-"))}">{c}</td>'
            for i, c in enumerate(cells)
        )
        body.append(f"<tr{attr}>{tds}</tr>")
    if not body:
        body.append(f'<tr class=empty><td colspan="{len(headers)}">{e(empty)}</td></tr>')
    return (
        f'<table id="{e(table_id)}"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table>'
    )


def fields(pairs: Iterable[tuple[str, str, str]]) -> str:
    """(id, label, escaped value) as a definition list."""
    items = "".join(
        f'<dt>{e(label)}</dt><dd id="{e(key)}">{value}</dd>' for key, label, value in pairs
    )
    return f"<dl class=fields>{items}</dl>"


def topic_link(name: str) -> str:
    return f'<a href="/console/topics/{quote(name)}">{e(name)}</a>'


def group_link(name: str) -> str:
    return f'<a href="/console/groups/{quote(name, safe="")}">{e(name)}</a>'


# ---- pages ---------------------------------------------------------------------------------------


def overview(health: dict[str, Any], cluster: dict[str, Any], topics: list[dict[str, Any]],
             groups: list[dict[str, Any]]) -> str:
    status = str(health.get("status", "unknown"))
    tiering = health.get("tiering") if isinstance(health.get("tiering"), dict) else None
    summary = [
        ("health-status", "Health", f'<span class="status {e(status)}">{e(status)}</span>'),
        ("cluster-id", "Cluster id", e(cluster.get("cluster_id"))),
        ("node-id", "Node id", e(cluster.get("node_id"))),
        ("kafka-address", "Kafka", e(cluster.get("kafka"))),
        ("topic-count", "Topics", e(len(topics))),
        ("group-count", "Consumer groups", e(len(groups))),
        ("local-bytes", "Local bytes", e(human_bytes(sum(t["local_bytes"] for t in topics)))),
        ("remote-bytes", "Archived bytes", e(human_bytes(sum(t["remote_bytes"] for t in topics)))),
    ]
    if tiering is not None:
        summary += [
            ("tiering-status", "Tiering", f'<span class="status {e(tiering.get("status"))}">'
             f'{e(tiering.get("status"))}</span>'),
            ("tiering-store", "Object store", e(tiering.get("store"))),
            ("upload-lag", "Upload lag",
             e(f'{tiering.get("upload_lag_offsets", 0)} offsets, '
               f'{human_bytes(tiering.get("upload_lag_bytes", 0))}')),
        ]
    errors = (tiering or {}).get("errors") or []
    problems = (
        "<h2>Problems</h2><ul id=problems>" + "".join(f"<li>{e(x)}</li>" for x in errors) + "</ul>"
        if errors else ""
    )
    return "<h1>Cluster</h1>" + fields(summary) + problems


def topics_page(rows: list[dict[str, Any]], *, internal: bool = False) -> str:
    cells = (
        (
            {"topic": r["name"]},
            [
                topic_link(r["name"]),
                e(r["partitions"]),
                e(r["records"]),
                e(human_bytes(r["local_bytes"])),
                e(human_bytes(r["remote_bytes"])),
                e(r["upload_lag"]) if r["tiered"] else "-",
                "yes" if r["tiered"] else "no",
            ],
        )
        for r in rows
    )
    toggle = (
        '<p><a id=internal-toggle href="/console/topics">hide internal topics</a></p>'
        if internal
        else '<p><a id=internal-toggle href="/console/topics?internal=1">'
        "show internal topics</a></p>"
    )
    return "<h1>Topics</h1>" + toggle + table(
        "topics",
        ["Topic", "Partitions", "Records", "Local", "Archived", "Upload lag", "Tiered"],
        cells,
        empty="no topics",
    )


def topic_page(view: dict[str, Any]) -> str:
    name = view["name"]
    parts = view["partitions"]
    summary = fields(
        [
            ("topic-name", "Topic", e(name)),
            ("topic-id", "Topic id", e(view["topic_id"])),
            ("tiered", "Tiered storage", "enabled" if view["remote_storage_enable"] else "off"),
            ("configs", "Overrides",
             e(", ".join(f"{k}={v}" for k, v in view["configs"].items()) or "none")),
        ]
    )
    rows = (
        (
            {"partition": str(p["partition"])},
            [
                e(p["partition"]),
                e(p["earliest_offset"]),
                e(p["remote_start_offset"] if p["remote_start_offset"] >= 0 else "-"),
                e(p["local_start_offset"]),
                e(p["last_uploaded_offset"] if p["last_uploaded_offset"] >= 0 else "-"),
                e(p["high_watermark"]),
                e(human_bytes(p["local_bytes"])),
                e(human_bytes(p["remote_bytes"])),
                e(p["upload_lag"]),
                e(when(p["last_upload_ms"])),
                f'<a href="/console/topics/{quote(name)}/messages?partition={p["partition"]}">'
                "browse</a>",
            ],
        )
        for p in parts
    )
    errors = [p for p in parts if p["last_error"]]
    problems = (
        "<h2>Problems</h2><ul id=problems>"
        + "".join(f"<li>partition {p['partition']}: {e(p['last_error'])}</li>" for p in errors)
        + "</ul>"
        if errors else ""
    )
    return (
        f"<h1>Topic {e(name)}</h1>{summary}<h2>Partitions</h2>"
        + table(
            "partitions",
            ["Partition", "Earliest", "Archive start", "Local start", "Last archived",
             "High watermark", "Local", "Archived", "Upload lag", "Last upload", "Messages"],
            rows,
        )
        + problems
    )


def groups_page(rows: list[dict[str, Any]]) -> str:
    cells = (
        (
            {"group": r["group"]},
            [group_link(r["group"]), e(r["state"]), e(r["members"]), e(", ".join(r["topics"])),
             e(r["total_lag"])],
        )
        for r in rows
    )
    return "<h1>Consumer groups</h1>" + table(
        "groups", ["Group", "State", "Members", "Topics", "Lag"], cells, empty="no groups"
    )


def group_page(view: dict[str, Any]) -> str:
    summary = fields(
        [
            ("group-name", "Group", e(view["group"])),
            ("group-state", "State", e(view["state"])),
            ("group-protocol", "Assignor", e(view["protocol"] or "-")),
            ("group-members", "Members", e(len(view["members"]))),
            ("total-lag", "Total lag", e(view["total_lag"])),
        ]
    )
    parts = (
        (
            {"topic": r["topic"], "partition": str(r["partition"])},
            [topic_link(r["topic"]), e(r["partition"]), e(r["current_offset"]),
             e(r["log_end_offset"]), e(r["lag"]), e(r["member_id"])],
        )
        for r in view["partitions"]
    )
    members = (
        ({"member": m["member_id"]},
         [e(m["member_id"]), e(m["client_id"]), e(m["host"]), e(", ".join(m["partitions"]))])
        for m in view["members"]
    )
    return (
        f"<h1>Group {e(view['group'])}</h1>{summary}<h2>Lag per partition</h2>"
        + table("group-partitions",
                ["Topic", "Partition", "Committed", "Log end", "Lag", "Member"], parts,
                empty="no committed offsets")
        + "<h2>Members</h2>"
        + table("members", ["Member", "Client", "Host", "Partitions"], members,
                empty="no active members")
    )


def messages_page(
    topic: str,
    partitions: int,
    query: dict[str, str],
    result: BrowseResult | None,
    fmt: str,
) -> str:
    def selected(name: str, value: str) -> str:
        return " selected" if query.get(name, "") == value else ""

    options = "".join(
        f'<option value="{p}"{selected("partition", str(p))}>{p}</option>'
        for p in range(partitions)
    )
    formats = "".join(
        f'<option value="{f}"{" selected" if f == fmt else ""}>{f}</option>' for f in FORMATS
    )
    form = (
        f'<form id=browse method=get action="/console/topics/{quote(topic)}/messages">'
        f'<label>Partition <select name=partition>{options}</select></label>'
        f'<label>Offset <input name=offset size=12 value="{e(query.get("offset", ""))}" '
        'placeholder="earliest"></label>'
        f'<label>or time <input name=timestamp size=22 value="{e(query.get("timestamp", ""))}" '
        'placeholder="2024-01-01T00:00:00Z or ms"></label>'
        f'<label>Max <input name=limit size=4 value="{e(query.get("limit", "20"))}"></label>'
        f"<label>Show as <select name=format>{formats}</select></label>"
        "<button type=submit>Read</button></form>"
    )
    if result is None:
        return f"<h1>Messages of {topic_link(topic)}</h1>{form}"
    info = ""
    if result.low >= 0:
        info = (
            f'<p id=range>Partition offsets {result.low} to {result.high - 1}; '
            f"reading from {result.start_offset}.</p>"
        )
    problem = f'<p class=error id=browse-error>{e(result.error)}</p>' if result.error else ""
    rows = []
    for m in result.messages:
        headers = "".join(
            f"<div><b>{e(k)}</b>: {e(v)}</div>" for k, v in iter_headers(m.headers, fmt)
        )
        rows.append(
            (
                {"offset": str(m.offset)},
                [
                    e(m.offset),
                    e(when(m.timestamp)),
                    f"<pre>{e(render_bytes(m.key, fmt))}</pre>",
                    f"<pre>{e(render_bytes(m.value, fmt))}</pre>",
                    headers or "-",
                ],
            )
        )
    more = ""
    if result.messages and result.messages[-1].offset + 1 < result.high:
        nxt = dict(query, offset=str(result.messages[-1].offset + 1))
        nxt.pop("timestamp", None)
        more = (
            f'<p><a id=next href="/console/topics/{quote(topic)}/messages?{urlencode(nxt)}">'
            "next page</a></p>"
        )
    return (
        f"<h1>Messages of {topic_link(topic)}</h1>{form}{info}{problem}"
        + table("messages", ["Offset", "Timestamp", "Key", "Value", "Headers"], rows,
                empty="no messages at this position")
        + more
    )
