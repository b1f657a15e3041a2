"""``streamd group``: list, describe (members, assignments, committed offsets, lag), seek and
delete consumer groups through the Kafka admin APIs.

Lag is the partition's high watermark minus the committed offset; a partition that is
assigned but has no commit shows no current offset and no lag (as ``kafka-consumer-groups``).
``seek`` rewrites committed offsets, which Kafka only allows while the group has no members; it
moves the partitions the group has committed, or every partition of ``--topics``, to an offset
spec (``--to``), to another group's committed offsets (``--to-group``) or to the offsets listed
in a file (``--to-file``: ``topic partition offset`` per line, as rpk reads it).
``offset-delete`` removes committed offsets (OffsetDelete) through kafka-python's admin client,
the one Python client that sends it.
A group the coordinator does not know (state Dead, no members, no offsets) is "not found".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from streamd.cli.common import (
    CliError,
    admin_client,
    client_command,
    emit,
    format_option,
    guard,
    kafka_python_admin,
    render_fields,
    result,
    section,
    settings,
    table_dicts,
    topic_partitions,
)
from streamd.cli.specs import OFFSET_HELP, parse_offset
from streamd.cli.specs import OffsetSpec as Spec


@click.group()
def group() -> None:
    """Inspect and manage consumer groups.

    \b
    Example:
      streamd group describe billing
    """


def _state(value: Any) -> str:
    name = getattr(value, "name", str(value))
    return name.title()


STATES = ("Stable", "PreparingRebalance", "CompletingRebalance", "Empty", "Dead")


@group.command(name="list")
@client_command
@click.option(
    "-s",
    "--states",
    "states",
    multiple=True,
    metavar="STATE[,STATE...]",
    help=f"Only groups in these states ({', '.join(STATES)}; case-insensitive).",
)
@format_option
def list_(states: tuple[str, ...], fmt: str) -> None:
    """List consumer groups and their states.

    \b
    Examples:
      streamd group list --format json
      streamd group list --states stable,empty
    """
    wanted = set()
    by_name = {s.lower(): s for s in STATES}
    for item in states:
        for name in filter(None, (x.strip().lower() for x in item.split(","))):
            if name not in by_name:
                raise CliError(f"unknown group state {name!r} (use {', '.join(STATES)})")
            wanted.add(getattr(ConsumerGroupState, _STATE_ENUM[by_name[name]]))
    admin = admin_client()
    with guard():
        kwargs: dict[str, Any] = {"request_timeout": settings().timeout}
        if wanted:
            kwargs["states"] = wanted
        listing = result(admin.list_consumer_groups(**kwargs))
    rows = [
        {
            "group": g.group_id,
            "state": _state(g.state),
            "type": "simple" if g.is_simple_consumer_group else "consumer",
        }
        for g in sorted(listing.valid, key=lambda g: g.group_id)
    ]
    emit(fmt, rows, lambda: table_dicts(rows, ["group", "state", "type"]))


_STATE_ENUM = {
    "Stable": "STABLE",
    "PreparingRebalance": "PREPARING_REBALANCING",
    "CompletingRebalance": "COMPLETING_REBALANCING",
    "Empty": "EMPTY",
    "Dead": "DEAD",
}


def _end_offsets(
    admin: AdminClient, tps: list[tuple[str, int]], spec: Any
) -> dict[tuple[str, int], int | None]:
    if not tps:
        return {}
    futures = admin.list_offsets(
        {TopicPartition(t, p): spec for t, p in tps}, request_timeout=settings().timeout
    )
    out: dict[tuple[str, int], int | None] = {}
    for tp, fut in futures.items():
        try:
            out[(tp.topic, tp.partition)] = fut.result(timeout=settings().timeout + 5).offset
        except Exception:
            out[(tp.topic, tp.partition)] = None
    return out


def _committed(admin: AdminClient, gid: str) -> dict[tuple[str, int], int]:
    with guard(gid):
        futures = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(gid)], request_timeout=settings().timeout
        )
    listing = result(futures[gid], gid)
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in listing.topic_partitions or []
        if tp.offset >= 0
    }


def _all_partitions(admin: AdminClient, topics: set[str]) -> set[tuple[str, int]]:
    """Every partition of the topics the group committed to, so one it has not read yet
    still shows (without a current offset)."""
    if not topics:
        return set()
    with guard():
        md = admin.list_topics(timeout=settings().timeout)
    return {(t, p) for t in topics if t in md.topics for p in md.topics[t].partitions}


def describe_group(admin: AdminClient, gid: str) -> dict[str, Any]:
    with guard(gid):
        futures = admin.describe_consumer_groups([gid], request_timeout=settings().timeout)
    desc = result(futures[gid], gid)
    committed = _committed(admin, gid)
    if _state(desc.state) == "Dead" and not desc.members and not committed:
        raise CliError(f"group {gid} not found")
    owners: dict[tuple[str, int], Any] = {}
    members = []
    for m in desc.members:
        tps = m.assignment.topic_partitions if m.assignment else []
        for tp in tps:
            owners[(tp.topic, tp.partition)] = m
        members.append(
            {
                "member_id": m.member_id,
                "client_id": m.client_id,
                "host": m.host,
                "instance_id": m.group_instance_id,
                "assignment": [f"{tp.topic}/{tp.partition}" for tp in tps],
            }
        )
    keys = sorted(set(committed) | set(owners) | _all_partitions(admin, {t for t, _ in committed}))
    ends = _end_offsets(admin, keys, OffsetSpec.latest())
    rows = []
    for key in keys:
        current, end = committed.get(key), ends.get(key)
        lag = end - current if current is not None and end is not None else None
        owner = owners.get(key)
        rows.append(
            {
                "topic": key[0],
                "partition": key[1],
                "current_offset": current,
                "log_end_offset": end,
                "lag": lag,
                "member_id": owner.member_id if owner else None,
                "client_id": owner.client_id if owner else None,
                "host": owner.host if owner else None,
            }
        )
    coord = desc.coordinator
    return {
        "group": gid,
        "state": _state(desc.state),
        "coordinator": f"{coord.id} {coord.host}:{coord.port}" if coord is not None else None,
        "assignor": desc.partition_assignor or None,
        "members": members,
        "total_lag": sum(r["lag"] for r in rows if r["lag"] is not None),
        "partitions": rows,
    }


@group.command()
@client_command
@click.argument("group_ids", metavar="GROUP", nargs=-1, required=True)
@format_option
def describe(group_ids: tuple[str, ...], fmt: str) -> None:
    """Show a group's members, assignments, committed offsets, log end offsets and lag.

    \b
    Example:
      streamd group describe billing
    """
    admin = admin_client()
    data = [describe_group(admin, gid) for gid in group_ids]

    def text() -> str:
        out = []
        for d in data:
            summary = render_fields(
                [
                    ("group", d["group"]),
                    ("coordinator", d["coordinator"]),
                    ("state", d["state"]),
                    ("assignor", d["assignor"]),
                    ("members", len(d["members"])),
                    ("total-lag", d["total_lag"]),
                ]
            )
            out.append(section("summary", summary))
            if d["partitions"]:
                out.append(
                    table_dicts(
                        d["partitions"],
                        [
                            "topic",
                            "partition",
                            "current_offset",
                            "log_end_offset",
                            "lag",
                            "member_id",
                            "client_id",
                            "host",
                        ],
                    )
                    + "\n"
                )
        return "\n".join(out)

    emit(fmt, data[0] if len(data) == 1 else data, text)


def _targets(
    admin: AdminClient, spec: Spec, tps: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    lows = _end_offsets(admin, tps, OffsetSpec.earliest())
    highs = _end_offsets(admin, tps, OffsetSpec.latest())
    stamps = (
        _end_offsets(admin, tps, OffsetSpec.for_timestamp(spec.value))
        if spec.kind == "timestamp"
        else {}
    )
    out = {}
    for key in tps:
        low, high = lows.get(key), highs.get(key)
        if low is None or high is None:
            raise CliError(f"cannot read the offsets of {key[0]}/{key[1]}")
        if spec.kind == "timestamp":
            found = stamps.get(key)
            out[key] = found if found is not None and found >= 0 else high
        else:
            resolved = spec.resolve(low, high)
            out[key] = high if resolved is None else resolved
    return out


def _read_offsets_file(path: Path) -> dict[tuple[str, int], int]:
    """``topic partition offset`` per line (blank lines and ``#`` comments skipped)."""
    out: dict[tuple[str, int], int] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.replace(",", " ").split()
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].lstrip("-").isdigit():
            raise CliError(f"{path}:{number}: expected 'topic partition offset', got {line!r}")
        out[(parts[0], int(parts[1]))] = int(parts[2])
    if not out:
        raise CliError(f"{path} lists no offsets")
    return out


@group.command()
@client_command
@click.argument("group_id", metavar="GROUP")
@click.option("--to", "to", metavar="OFFSET", help=f"{OFFSET_HELP}.")
@click.option("--to-group", metavar="GROUP", help="Copy another group's committed offsets.")
@click.option(
    "--to-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Offsets from a file: 'topic partition offset' per line.",
)
@click.option(
    "--topics",
    multiple=True,
    metavar="T[,T...]",
    help="Move every partition of these topics (default: what the group committed).",
)
@click.option("--dry-run", is_flag=True, help="Show the new offsets without committing them.")
@format_option
def seek(
    group_id: str,
    to: str | None,
    to_group: str | None,
    to_file: Path | None,
    topics: tuple[str, ...],
    dry_run: bool,
    fmt: str,
) -> None:
    """Move a group's committed offsets (the group must have no active members).

    \b
    Examples:
      streamd group seek billing --to start
      streamd group seek billing --to @2024-01-01T00:00:00Z --topics orders,payments
      streamd group seek billing --to-group billing-backup
      streamd group seek billing --to-file offsets.txt
    """
    if sum(x is not None for x in (to, to_group, to_file)) != 1:
        raise CliError("give exactly one of --to OFFSET, --to-group GROUP, --to-file FILE")
    spec = parse_offset(to) if to is not None else None
    names = [t.strip() for item in topics for t in item.split(",") if t.strip()]
    admin = admin_client()
    with guard(group_id):
        futures = admin.describe_consumer_groups([group_id], request_timeout=settings().timeout)
    desc = result(futures[group_id], group_id)
    if desc.members:
        raise CliError(
            f"group {group_id} has {len(desc.members)} active member(s); "
            "stop its consumers before seeking"
        )
    committed = _committed(admin, group_id)
    if spec is None:
        source = (
            _read_offsets_file(to_file) if to_file is not None
            else _committed(admin, str(to_group))
        )
        if not source:
            raise CliError(f"group {to_group} has no committed offsets to copy")
        targets = {
            tp: off for tp, off in sorted(source.items()) if not names or tp[0] in names
        }
        for topic_name in sorted({t for t, _ in targets}):
            known = topic_partitions(admin, topic_name)
            bad = [p for t, p in targets if t == topic_name and p not in known]
            if bad:
                raise CliError(f"topic {topic_name} has no partition {bad[0]}")
    else:
        if names:
            tps = [(t, p) for t in names for p in topic_partitions(admin, t)]
        else:
            tps = sorted(committed)
            if not tps:
                raise CliError(
                    f"group {group_id} has no committed offsets; name the topics to move with "
                    "--topics"
                )
        targets = _targets(admin, spec, tps)
    if not dry_run:
        request = ConsumerGroupTopicPartitions(
            group_id, [TopicPartition(t, p, off) for (t, p), off in targets.items()]
        )
        with guard(group_id):
            futures = admin.alter_consumer_group_offsets(
                [request], request_timeout=settings().timeout
            )
        altered = result(futures[group_id], group_id)
        for tp in altered.topic_partitions or []:
            if tp.error is not None:
                raise CliError(f"cannot move {tp.topic}/{tp.partition}: {tp.error.str()}")
    rows = [
        {"topic": t, "partition": p, "prior_offset": committed.get((t, p)), "new_offset": off}
        for (t, p), off in sorted(targets.items())
    ]
    emit(fmt, rows, lambda: table_dicts(rows, ["topic", "partition", "prior_offset", "new_offset"]))


@group.command(name="offset-delete")
@client_command
@click.argument("group_id", metavar="GROUP")
@click.option(
    "--topic",
    "topic_args",
    multiple=True,
    required=True,
    metavar="TOPIC[:P,P...]",
    help="Delete the group's offsets of this topic (all partitions, or those listed).",
)
@format_option
def offset_delete(group_id: str, topic_args: tuple[str, ...], fmt: str) -> None:
    """Delete a group's committed offsets for topics or partitions (OffsetDelete); the group
    must not be consuming them.

    \b
    Examples:
      streamd group offset-delete billing --topic orders
      streamd group offset-delete billing --topic orders:0,1 --topic payments
    """
    from kafka import TopicPartition as PyTopicPartition
    from kafka.errors import KafkaError as PyKafkaError

    admin = admin_client()
    tps: list[tuple[str, int]] = []
    for arg in topic_args:
        name, _, plist = arg.partition(":")
        known = topic_partitions(admin, name)
        chosen = [int(p) for p in plist.split(",") if p.strip()] if plist else known
        bad = [p for p in chosen if p not in known]
        if bad:
            raise CliError(f"topic {name} has no partition {bad[0]} (it has {len(known)})")
        tps += [(name, p) for p in chosen]
    client = kafka_python_admin()
    try:
        answers = client.delete_group_offsets(
            group_id, [PyTopicPartition(t, p) for t, p in tps]
        )
    except PyKafkaError as exc:
        raise CliError(f"group {group_id}: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()
    rows, failures = [], []
    for tp, err in sorted(answers.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
        name = getattr(err, "__name__", str(err))
        ok = name == "NoError"
        rows.append({"topic": tp.topic, "partition": tp.partition, "status": "OK" if ok else name})
        if not ok:
            failures.append(f"{tp.topic}/{tp.partition}: {name}")
    emit(fmt, rows, lambda: table_dicts(rows, ["topic", "partition", "status"]))
    if failures:
        raise CliError(f"could not delete every offset of group {group_id}: {failures[0]}")


@group.command()
@client_command
@click.argument("group_ids", metavar="GROUP", nargs=-1, required=True)
@format_option
def delete(group_ids: tuple[str, ...], fmt: str) -> None:
    """Delete groups and their committed offsets (groups must have no active members).

    \b
    Example:
      streamd group delete billing old-billing
    """
    admin = admin_client()
    with guard():
        futures = admin.delete_consumer_groups(list(group_ids), request_timeout=settings().timeout)
    rows, failures = [], []
    for gid in group_ids:
        try:
            result(futures[gid], gid)
            rows.append({"group": gid, "status": "OK"})
        except CliError as exc:
            failures.append(exc.format_message())
    emit(fmt, rows, lambda: table_dicts(rows, ["group", "status"]) if rows else "")
    if failures:
        raise CliError(failures[0])
